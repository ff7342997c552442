/*-------------------------------------------------------------------------
 *
 * shared_cache.c
 *	  The ownership entries of recently written records, in shared memory,
 *	  for every backend.
 *
 * Each backend caches ownership (catalog.c), but a new session starts with
 * an empty cache, and a domain with many entries keeps missing it: every
 * miss is an index probe of sor.owner_entry.  What a probe found is
 * therefore also kept here, where the next session finds it.
 *
 * A slot holds the facts of one ownership entry: the site and epoch it
 * gives, or that the record has no entry (its owner is then the domain's
 * default, which each backend keeps in its own cache of domains).  Entries
 * still waiting for acknowledgements are never kept, since their answer
 * depends on sor.handoff_ack too.
 *
 * Why a slot is never stale rests on the record locks (lock.c):
 *
 *	- a slot is filled only by a writer that holds the record's write lock
 *	  (or its domain's), after it took the lock, from a probe under the
 *	  latest snapshot, and only if its own transaction changed no
 *	  ownership entry (it would see its own uncommitted change);
 *	  sor.prewarm_shared_cache() fills a domain's slots the same way, under
 *	  the domain's lock;
 *	- every change of an ownership entry first takes the record's hand-off
 *	  lock, which waits for those writers and keeps new ones out until it
 *	  commits, and empties the record's slot (sor_shared_cache_forget());
 *	- TRUNCATE of the catalog, which has no row triggers, makes every slot
 *	  old at once (sor_shared_cache_forget_all()); it holds the catalog
 *	  exclusively, and a probe holds it shared until its transaction ends;
 *	- a slot names the database and the OID of its sor.owner_entry, so a
 *	  dropped and created again extension does not find the old slots.
 *
 * So between the hand-off lock and its commit no one can fill the slot
 * again, and after the commit a probe sees the change.
 *
 * The cache is an array of buckets of SOR_SHARED_CACHE_WAYS slots, each
 * bucket under one of SOR_SHARED_CACHE_LOCKS lightweight locks.  A record
 * may go to either of two buckets (both picked by its hash and database):
 * the first with a free slot, else a slot picked by the hash in the first
 * is overwritten.  In a cache 1.6 times the size of a domain, one choice
 * would leave about 6% of the domain's records out (a bucket gets more
 * than 4 of them); with two, a record is left out only when both of its
 * buckets are full.  Records whose "domain\0key" is
 * longer than SOR_SHARED_KEY_MAX bytes are not kept.  The size is
 * sor.shared_cache_entries; without sor in shared_preload_libraries there
 * is no shared cache and every function here does nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "sor.h"

#define SOR_SHARED_KEY_MAX		64
#define SOR_SHARED_CACHE_WAYS	4
#define SOR_SHARED_CACHE_LOCKS	128

typedef struct SharedOwnerSlot
{
	uint64		record_hash;
	Oid			dboid;			/* InvalidOid: slot unused */
	Oid			owner_entry;	/* OID of sor.owner_entry in dboid */
	uint32		generation;		/* of the cache, when filled */
	bool		has_entry;		/* else: no entry, the default owner */
	uint8		len;			/* of domain_key */
	int64		epoch;
	char		site[NAMEDATALEN];
	char		domain_key[SOR_SHARED_KEY_MAX];	/* "domain\0key" */
} SharedOwnerSlot;

typedef struct SharedCache
{
	pg_atomic_uint32 generation;
	int			nbuckets;
	LWLockPadded *locks;
	SharedOwnerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} SharedCache;

static SharedCache *shared_cache = NULL;

/* The transaction that changed an ownership entry last in this backend. */
static LocalTransactionId changed_in = InvalidLocalTransactionId;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
shared_cache_size(void)
{
	return add_size(offsetof(SharedCache, slots),
					mul_size(sor_shared_cache_entries, sizeof(SharedOwnerSlot)));
}

static void
shared_cache_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_cache_size());
	RequestNamedLWLockTranche("sor shared cache", SOR_SHARED_CACHE_LOCKS);
}

static void
shared_cache_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared_cache = ShmemInitStruct("sor shared cache", shared_cache_size(),
								   &found);
	if (!found)
	{
		memset(shared_cache, 0, shared_cache_size());
		pg_atomic_init_u32(&shared_cache->generation, 1);
		shared_cache->nbuckets = sor_shared_cache_entries / SOR_SHARED_CACHE_WAYS;
		shared_cache->locks = GetNamedLWLockTranche("sor shared cache");
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init, after the settings are defined. */
void
sor_shared_cache_init(void)
{
	if (!process_shared_preload_libraries_in_progress ||
		sor_shared_cache_entries < SOR_SHARED_CACHE_WAYS)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shared_cache_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shared_cache_shmem_startup;
}

/*
 * Whether this backend may use the cache now: it exists, and this
 * transaction changed no ownership entry.
 */
static bool
shared_cache_usable(void)
{
	return shared_cache != NULL && !sor_transaction_changed_ownership();
}

/* Whether this transaction has changed an ownership entry. */
bool
sor_transaction_changed_ownership(void)
{
	return changed_in == MyLocalTransactionId;
}

/*
 * Raise an error unless this backend may fill the cache now (for
 * sor.prewarm_shared_cache(), which would otherwise do nothing silently).
 */
void
sor_shared_cache_check_usable(void)
{
	if (shared_cache == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sor's shared ownership cache is not available"),
				 errdetail("It needs sor in shared_preload_libraries and sor.shared_cache_entries of at least %d.",
						   SOR_SHARED_CACHE_WAYS)));
	if (sor_transaction_changed_ownership())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot fill the shared ownership cache in a transaction that has changed ownership"),
				 errhint("Fill it in a transaction of its own.")));
}

/*
 * The two buckets a record may go to: the first slot of each, and each
 * bucket's lock.  The locks are in one array, so taking them in the order
 * of their addresses takes them in one order everywhere.
 */
static void
buckets_of(uint64 record_hash, SharedOwnerSlot *first[2], LWLock *lock[2])
{
	uint64		h = hash_combine64(record_hash, MyDatabaseId);
	uint32		bucket[2];

	bucket[0] = (uint32) (h % (uint64) shared_cache->nbuckets);
	bucket[1] = (uint32) ((h >> 32) % (uint64) shared_cache->nbuckets);
	for (int choice = 0; choice < 2; choice++)
	{
		first[choice] = &shared_cache->slots[bucket[choice] * SOR_SHARED_CACHE_WAYS];
		lock[choice] = &shared_cache->locks[bucket[choice] % SOR_SHARED_CACHE_LOCKS].lock;
	}
}

/* "domain\0key" into buf; false if it does not fit a slot. */
static bool
make_domain_key(const char *domain, const char *key, char *buf, uint8 *len)
{
	size_t		dlen = strlen(domain);
	size_t		klen = strlen(key);

	if (dlen + 1 + klen > SOR_SHARED_KEY_MAX)
		return false;
	memcpy(buf, domain, dlen + 1);
	memcpy(buf + dlen + 1, key, klen);
	*len = (uint8) (dlen + 1 + klen);
	return true;
}

static bool
slot_is(SharedOwnerSlot *slot, uint64 record_hash, Oid owner_entry,
		uint32 generation, const char *domain_key, uint8 len)
{
	return slot->record_hash == record_hash &&
		slot->dboid == MyDatabaseId &&
		slot->owner_entry == owner_entry &&
		slot->generation == generation &&
		slot->len == len &&
		memcmp(slot->domain_key, domain_key, len) == 0;
}

/*
 * The cached ownership entry of (domain, key) of the sor.owner_entry whose
 * OID is owner_entry: true if cached, with *has_entry false when the record
 * has no entry, else its ownership in *entry.  The caller must hold the
 * record's write lock.
 */
bool
sor_shared_cache_get(Oid owner_entry, const char *domain, const char *key,
					 uint64 record_hash, bool *has_entry, SorOwnership *entry)
{
	char		domain_key[SOR_SHARED_KEY_MAX];
	uint8		len;
	uint32		generation;
	SharedOwnerSlot *first[2];
	LWLock	   *lock[2];
	bool		found = false;
	int			choice;
	int			i;

	if (!shared_cache_usable() ||
		!make_domain_key(domain, key, domain_key, &len))
		return false;

	buckets_of(record_hash, first, lock);
	for (choice = 0; choice < 2 && !found; choice++)
	{
		SharedOwnerSlot *slot = first[choice];

		LWLockAcquire(lock[choice], LW_SHARED);
		generation = pg_atomic_read_u32(&shared_cache->generation);
		for (i = 0; i < SOR_SHARED_CACHE_WAYS; i++, slot++)
		{
			if (!slot_is(slot, record_hash, owner_entry, generation, domain_key, len))
				continue;
			found = true;
			*has_entry = slot->has_entry;
			memset(entry, 0, sizeof(SorOwnership));
			entry->owned = slot->has_entry;
			strlcpy(entry->site, slot->site, NAMEDATALEN);
			entry->epoch = slot->epoch;
			break;
		}
		LWLockRelease(lock[choice]);
	}
	return found;
}

/*
 * Keep what a probe found for (domain, key): its ownership entry (entry,
 * not waiting for acknowledgements), or that it has none (entry NULL).  The
 * caller must hold the record's write lock (or its domain's) and have
 * probed after taking it.  False if the record cannot be kept.
 */
bool
sor_shared_cache_put(Oid owner_entry, const char *domain, const char *key,
					 uint64 record_hash, const SorOwnership *entry)
{
	char		domain_key[SOR_SHARED_KEY_MAX];
	uint8		len;
	uint32		generation;
	SharedOwnerSlot *first[2];
	SharedOwnerSlot *slot = NULL;
	LWLock	   *lock[2];
	LWLock	   *lower;
	LWLock	   *upper;
	int			choice;
	int			i;

	if (!shared_cache_usable() ||
		!make_domain_key(domain, key, domain_key, &len))
		return false;

	/* both buckets' locks, in the order of their addresses */
	buckets_of(record_hash, first, lock);
	lower = Min(lock[0], lock[1]);
	upper = Max(lock[0], lock[1]);
	LWLockAcquire(lower, LW_EXCLUSIVE);
	if (upper != lower)
		LWLockAcquire(upper, LW_EXCLUSIVE);
	generation = pg_atomic_read_u32(&shared_cache->generation);
	/* the record's own slot, else an unused or old one, else by the hash */
	for (choice = 0; choice < 2 && slot == NULL; choice++)
		for (i = 0; i < SOR_SHARED_CACHE_WAYS && slot == NULL; i++)
			if (slot_is(&first[choice][i], record_hash, owner_entry,
						generation, domain_key, len))
				slot = &first[choice][i];
	for (choice = 0; choice < 2 && slot == NULL; choice++)
		for (i = 0; i < SOR_SHARED_CACHE_WAYS && slot == NULL; i++)
			if (first[choice][i].dboid == InvalidOid ||
				first[choice][i].generation != generation)
				slot = &first[choice][i];
	if (slot == NULL)
		slot = &first[0][(record_hash >> 32) % SOR_SHARED_CACHE_WAYS];

	slot->record_hash = record_hash;
	slot->dboid = MyDatabaseId;
	slot->owner_entry = owner_entry;
	slot->generation = generation;
	slot->has_entry = entry != NULL;
	slot->len = len;
	slot->epoch = entry ? entry->epoch : 0;
	strlcpy(slot->site, entry ? entry->site : "", NAMEDATALEN);
	memcpy(slot->domain_key, domain_key, len);
	if (upper != lower)
		LWLockRelease(upper);
	LWLockRelease(lower);
	return true;
}

/*
 * The ownership entry of (domain, key) is about to change: empty its slot.
 * Called with the record's hand-off lock held.  Until this transaction
 * ends, this backend neither reads nor fills the cache.
 */
void
sor_shared_cache_forget(const char *domain, const char *key)
{
	uint64		record_hash;
	SharedOwnerSlot *first[2];
	LWLock	   *lock[2];
	int			choice;
	int			i;

	changed_in = MyLocalTransactionId;
	if (shared_cache == NULL)
		return;

	record_hash = sor_record_hash(domain, key);
	buckets_of(record_hash, first, lock);
	for (choice = 0; choice < 2; choice++)
	{
		LWLockAcquire(lock[choice], LW_EXCLUSIVE);
		for (i = 0; i < SOR_SHARED_CACHE_WAYS; i++)
			if (first[choice][i].record_hash == record_hash &&
				first[choice][i].dboid == MyDatabaseId)
				first[choice][i].dboid = InvalidOid;
		LWLockRelease(lock[choice]);
	}
}

/*
 * Every slot becomes old (TRUNCATE of a sor catalog table).  Called with
 * the catalog table locked exclusively.
 */
void
sor_shared_cache_forget_all(void)
{
	changed_in = MyLocalTransactionId;
	if (shared_cache != NULL)
		pg_atomic_fetch_add_u32(&shared_cache->generation, 1);
}
