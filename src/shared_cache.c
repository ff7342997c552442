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
 *	- so does an ALTER TABLE of the catalog, such as the ENABLE TRIGGER that
 *	  ends a restore with the catalog's triggers disabled, which changed
 *	  entries without emptying their slots.  It does not wait for probes,
 *	  so a slot is filled only if the cache's generation has not moved
 *	  since before the probe's snapshot, and the generation moves again
 *	  when the ALTER TABLE's transaction commits (a probe between the two
 *	  could not see the restored entries yet);
 *	- a slot names the database and the OID of its sor.owner_entry, so a
 *	  dropped and created again extension does not find the old slots.
 *
 * So between the hand-off lock and its commit no one can fill the slot
 * again, and after the commit a probe sees the change.
 *
 * The cache is an array of buckets of SOR_SHARED_CACHE_WAYS slots, each
 * bucket under one of SOR_SHARED_CACHE_LOCKS lightweight locks.  A record
 * may go to either of two buckets (both picked by its hash and database):
 * the one with more free slots, else a slot picked by the hash in the
 * first is overwritten.  In a cache 1.6 times the size of a domain, one
 * choice would leave about 6% of the domain's records out (a bucket gets
 * more than 4 of them); taking the first bucket with a free slot, 1%; the
 * emptier of the two, 0.03% (a simulation of 10 million records in 4
 * million buckets), with 28% of the records in their second bucket, where
 * a lookup reads both.
 *
 * A slot is one cache line (64 bytes), so that a lookup reads one line
 * for each slot it looks at.  It names its domain and site by numbers:
 * each name is written once into a table of names in shared memory
 * (SOR_SHARED_NAMES of them, never removed until the server restarts), and
 * each backend remembers the numbers of the names it has used.  The key is
 * kept whole, to be compared exactly: its text if it is at most
 * SOR_SHARED_KEY_MAX bytes, and a uuid key (always 36 characters) as its
 * 16 bytes.  Records with a longer key, or a domain or site whose name
 * the table of names cannot take, are not kept.  The size is
 * sor.shared_cache_entries; without sor in shared_preload_libraries there
 * is no shared cache and every function here does nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "sor.h"

#define SOR_SHARED_CACHE_WAYS	4
#define SOR_SHARED_CACHE_LOCKS	128
#define SOR_SHARED_KEY_MAX		31
#define SOR_SHARED_NAMES		1024

/* in SharedOwnerSlot.key_len: the key is a uuid's 16 bytes, not its text */
#define SOR_KEY_PACKED_UUID		0x80

typedef struct SharedOwnerSlot
{
	uint64		record_hash;
	int64		epoch;
	Oid			dboid;			/* InvalidOid: slot unused */
	Oid			owner_entry;	/* OID of sor.owner_entry in dboid */
	uint32		generation;		/* of the cache, when filled */
	uint16		domain;			/* number of the domain's name */
	uint16		site;			/* number of the site's name; 0: no entry,
								 * the default owner */
	uint8		key_len;		/* of key, or SOR_KEY_PACKED_UUID | 16 */
	char		key[SOR_SHARED_KEY_MAX];
} SharedOwnerSlot;

StaticAssertDecl(sizeof(SharedOwnerSlot) == 64,
				 "a shared ownership slot is one cache line");

typedef struct SharedCache
{
	pg_atomic_uint32 generation;
	int			nbuckets;
	LWLockPadded *locks;		/* SOR_SHARED_CACHE_LOCKS, then the names' */
	SharedOwnerSlot *slots;		/* aligned to a cache line */
	/* names of domains and sites: number n is names[n - 1] */
	uint32		nnames;			/* under the tranche's last lock */
	bool		names_full;		/* a name found no room (logged once) */
	NameData	names[SOR_SHARED_NAMES];
} SharedCache;

/* A backend's memory of the numbers of names (local_names). */
typedef struct LocalName
{
	char		name[NAMEDATALEN];	/* hash key */
	uint16		number;			/* 0: the table of names is full */
} LocalName;

static SharedCache *shared_cache = NULL;
static HTAB *local_names = NULL;

/* The transaction that changed an ownership entry last in this backend. */
static LocalTransactionId changed_in = InvalidLocalTransactionId;

/* This transaction made every slot old, and does so again at its commit. */
static bool forget_all_at_commit = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
shared_cache_size(void)
{
	/* the slots, aligned to a cache line after the header */
	return add_size(sizeof(SharedCache) + PG_CACHE_LINE_SIZE,
					mul_size(sor_shared_cache_entries, sizeof(SharedOwnerSlot)));
}

static void
shared_cache_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_cache_size());
	/* the buckets' locks, and one for adding names */
	RequestNamedLWLockTranche("sor shared cache", SOR_SHARED_CACHE_LOCKS + 1);
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
		shared_cache->slots = (SharedOwnerSlot *)
			CACHELINEALIGN((char *) shared_cache + sizeof(SharedCache));
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

/*
 * The number of a name in the table of names, added if need be: 0 if it is
 * too long for the table or the table is full.  Each backend asks the
 * table once for each name, and remembers the answer.
 */
static uint16
shared_name(const char *name)
{
	LocalName  *local;
	LWLock	   *lock = &shared_cache->locks[SOR_SHARED_CACHE_LOCKS].lock;
	uint32		n;
	uint32		i;
	bool		first_left_out = false;

	if (strlen(name) >= NAMEDATALEN)
		return 0;
	if (local_names == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(LocalName);
		ctl.hcxt = TopMemoryContext;
		local_names = hash_create("sor shared cache names", 16, &ctl,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	local = hash_search(local_names, name, HASH_FIND, NULL);
	if (local != NULL)
		return local->number;

	/*
	 * Names are only ever added.  A number read from a slot was handed out
	 * under this lock, so its name is there to read without it.
	 */
	LWLockAcquire(lock, LW_EXCLUSIVE);
	n = shared_cache->nnames;
	for (i = 0; i < n; i++)
		if (strcmp(NameStr(shared_cache->names[i]), name) == 0)
			break;
	if (i == n && n < SOR_SHARED_NAMES)
	{
		strlcpy(NameStr(shared_cache->names[n]), name, NAMEDATALEN);
		shared_cache->nnames = n + 1;
	}
	else if (i == n && !shared_cache->names_full)
		shared_cache->names_full = first_left_out = true;
	LWLockRelease(lock);

	if (first_left_out)
		ereport(LOG,
				(errmsg("sor's shared ownership cache has no room for the name \"%s\"",
						name),
				 errdetail("The cache names at most %d domains and sites until the server restarts; ownership entries of the others are not kept, and writes of their records probe sor.owner_entry.",
						   SOR_SHARED_NAMES)));

	local = hash_search(local_names, name, HASH_ENTER, NULL);
	local->number = i < SOR_SHARED_NAMES ? (uint16) (i + 1) : 0;
	return local->number;
}

/* The number of domain's name, asked of the table once per cached domain. */
static uint16
domain_number(SorDomain *domain)
{
	if (domain->shared_cache_name < 0)
		domain->shared_cache_name = shared_name(domain->name);
	return (uint16) domain->shared_cache_name;
}

/*
 * key as a slot keeps it, into buf: false if it does not fit.  A uuid key,
 * in its canonical text form (uuid_out's), is kept as its 16 bytes.
 */
static bool
pack_key(const SorDomain *domain, const char *key, char *buf, uint8 *len)
{
	size_t		klen = strlen(key);

	if (domain->key_type == UUIDOID && klen == 36 &&
		key[8] == '-' && key[13] == '-' && key[18] == '-' && key[23] == '-')
	{
		/* uuid_out's groups of 8, 4, 4, 4 and 12 hexadecimal digits */
		static const int group_start[] = {0, 9, 14, 19, 24, 37};
		char	   *out = buf;

		for (int g = 0; g < 5; g++)
			out += hex_decode(key + group_start[g],
							  group_start[g + 1] - group_start[g] - 1, out);
		Assert(out - buf == UUID_LEN);
		*len = SOR_KEY_PACKED_UUID | UUID_LEN;
		return true;
	}
	if (klen > SOR_SHARED_KEY_MAX)
		return false;
	memcpy(buf, key, klen);
	*len = (uint8) klen;
	return true;
}

static bool
slot_is(SharedOwnerSlot *slot, uint64 record_hash, Oid owner_entry,
		uint32 generation, uint16 domain, const char *key, uint8 key_len)
{
	return slot->record_hash == record_hash &&
		slot->dboid == MyDatabaseId &&
		slot->owner_entry == owner_entry &&
		slot->generation == generation &&
		slot->domain == domain &&
		slot->key_len == key_len &&
		memcmp(slot->key, key, key_len & ~SOR_KEY_PACKED_UUID) == 0;
}

/*
 * The cached ownership entry of (domain, key) of the sor.owner_entry whose
 * OID is owner_entry: true if cached, with *has_entry false when the record
 * has no entry, else its ownership in *entry.  The caller must hold the
 * record's write lock.
 */
bool
sor_shared_cache_get(Oid owner_entry, SorDomain *domain,
					 const char *key, uint64 record_hash,
					 bool *has_entry, SorOwnership *entry)
{
	char		packed[SOR_SHARED_KEY_MAX];
	uint8		key_len;
	uint16		domain_name;
	uint16		site = 0;
	int64		epoch = 0;
	uint32		generation;
	SharedOwnerSlot *first[2];
	LWLock	   *lock[2];
	bool		found = false;
	int			choice;
	int			i;

	if (!shared_cache_usable() ||
		!pack_key(domain, key, packed, &key_len) ||
		(domain_name = domain_number(domain)) == 0)
		return false;

	buckets_of(record_hash, first, lock);
	for (choice = 0; choice < 2 && !found; choice++)
	{
		SharedOwnerSlot *slot = first[choice];

		LWLockAcquire(lock[choice], LW_SHARED);
		generation = pg_atomic_read_u32(&shared_cache->generation);
		for (i = 0; i < SOR_SHARED_CACHE_WAYS; i++, slot++)
		{
			if (!slot_is(slot, record_hash, owner_entry, generation,
						 domain_name, packed, key_len))
				continue;
			found = true;
			site = slot->site;
			epoch = slot->epoch;
			break;
		}
		LWLockRelease(lock[choice]);
	}
	if (!found)
		return false;

	*has_entry = site != 0;
	memset(entry, 0, sizeof(SorOwnership));
	entry->owned = site != 0;
	if (site != 0)
		strlcpy(entry->site, NameStr(shared_cache->names[site - 1]),
				NAMEDATALEN);
	entry->epoch = epoch;
	return true;
}

/*
 * The cache's generation, to be read before the snapshot of a probe whose
 * findings go to sor_shared_cache_put().
 */
uint32
sor_shared_cache_generation(void)
{
	uint32		generation;

	if (shared_cache == NULL)
		return 0;
	generation = pg_atomic_read_u32(&shared_cache->generation);
	/* read before the snapshot's data */
	pg_read_barrier();
	return generation;
}

/*
 * Keep what a probe found for (domain, key): its ownership entry (entry,
 * not waiting for acknowledgements), or that it has none (entry NULL).  The
 * caller must hold the record's write lock (or its domain's) and have
 * probed after taking it, with a snapshot taken after it read generation
 * (sor_shared_cache_generation()).  False if the record cannot be kept.
 */
bool
sor_shared_cache_put(Oid owner_entry, SorDomain *domain,
					 const char *key, uint64 record_hash,
					 const SorOwnership *entry, uint32 generation)
{
	char		packed[SOR_SHARED_KEY_MAX];
	uint8		key_len;
	uint16		domain_name;
	uint16		site = 0;
	SharedOwnerSlot *first[2];
	SharedOwnerSlot *slot = NULL;
	LWLock	   *lock[2];
	LWLock	   *lower;
	LWLock	   *upper;
	int			choice;
	int			i;

	if (!shared_cache_usable() ||
		!pack_key(domain, key, packed, &key_len) ||
		(domain_name = domain_number(domain)) == 0 ||
		(entry != NULL && (site = shared_name(entry->site)) == 0))
		return false;

	/* both buckets' locks, in the order of their addresses */
	buckets_of(record_hash, first, lock);
	lower = Min(lock[0], lock[1]);
	upper = Max(lock[0], lock[1]);
	LWLockAcquire(lower, LW_EXCLUSIVE);
	if (upper != lower)
		LWLockAcquire(upper, LW_EXCLUSIVE);

	/*
	 * Every slot became old since the probe began: what it found may be
	 * old too.  (A move after this check makes this slot old with the
	 * rest.)
	 */
	if (pg_atomic_read_u32(&shared_cache->generation) != generation)
	{
		if (upper != lower)
			LWLockRelease(upper);
		LWLockRelease(lower);
		return false;
	}

	/*
	 * The record's own slot, else an unused or old one in the bucket with
	 * more of them (the first if both have as many), else one picked by
	 * the hash in the first.
	 */
	for (choice = 0; choice < 2 && slot == NULL; choice++)
		for (i = 0; i < SOR_SHARED_CACHE_WAYS && slot == NULL; i++)
			if (slot_is(&first[choice][i], record_hash, owner_entry,
						generation, domain_name, packed, key_len))
				slot = &first[choice][i];
	if (slot == NULL)
	{
		SharedOwnerSlot *free_slot[2] = {NULL, NULL};
		int			nfree[2] = {0, 0};

		for (choice = 0; choice < 2; choice++)
			for (i = 0; i < SOR_SHARED_CACHE_WAYS; i++)
				if (first[choice][i].dboid == InvalidOid ||
					first[choice][i].generation != generation)
				{
					free_slot[choice] = &first[choice][i];
					nfree[choice]++;
				}
		if (nfree[0] == 0 && nfree[1] == 0)
			slot = &first[0][(record_hash >> 32) % SOR_SHARED_CACHE_WAYS];
		else
			slot = free_slot[nfree[1] > nfree[0] ? 1 : 0];
	}

	slot->record_hash = record_hash;
	slot->epoch = entry ? entry->epoch : 0;
	slot->dboid = MyDatabaseId;
	slot->owner_entry = owner_entry;
	slot->generation = generation;
	slot->domain = domain_name;
	slot->site = site;
	slot->key_len = key_len;
	memcpy(slot->key, packed, key_len & ~SOR_KEY_PACKED_UUID);
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
 * At the commit of a transaction that called sor_shared_cache_forget_all(),
 * every slot becomes old again; such a transaction cannot be prepared,
 * since its commit could come in any session.
 */
static void
forget_all_xact_callback(XactEvent event, void *arg)
{
	if (!forget_all_at_commit)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot PREPARE a transaction that has truncated or altered a sor catalog table")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			pg_atomic_fetch_add_u32(&shared_cache->generation, 1);
			forget_all_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			forget_all_at_commit = false;
			break;
		default:
			break;
	}
}

/*
 * Every slot becomes old, now and when this transaction commits (TRUNCATE
 * or ALTER TABLE of a sor catalog table).
 */
void
sor_shared_cache_forget_all(void)
{
	static bool callback_registered = false;

	changed_in = MyLocalTransactionId;
	if (shared_cache == NULL)
		return;
	pg_atomic_fetch_add_u32(&shared_cache->generation, 1);
	if (!callback_registered)
	{
		RegisterXactCallback(forget_all_xact_callback, NULL);
		callback_registered = true;
	}
	forget_all_at_commit = true;
}
