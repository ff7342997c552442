/*-------------------------------------------------------------------------
 *
 * lock.c
 *	  Record and domain locks that keep writes and hand-offs apart.
 *
 * A write to a record and a change of the record's owner must never
 * interleave (guarantee G5).  Writers hold a share lock on the record until
 * their transaction ends; every change of an ownership entry takes the
 * record's exclusive lock (in the catalog trigger, so also when the change
 * arrives by replication).  A writer checks ownership only after it holds
 * its lock, against the latest committed catalog, so a transfer that
 * committed first is always seen, and a transfer that comes later waits.
 *
 * Locks are advisory locks in lock classes of sor's own (SOR_LOCK_*), keyed
 * by a 64-bit hash.  A hash collision makes two records share a lock, which
 * may make one wait for the other but never lets anything through.
 *
 * A transaction that writes many records of one domain (COPY, bulk INSERT)
 * would fill the shared lock table with record locks, so after
 * SOR_LOCK_ESCALATION_THRESHOLD records it takes one share lock on the whole
 * domain instead.  Lock modes on a domain:
 *
 *	ShareLock			a writer that escalated, or sor.prewarm_shared_cache()
 *	RowExclusiveLock	a hand-off of one record
 *	AccessExclusiveLock	a change of the domain's default owner, or a
 *						transaction that hands off many records of it
 *
 * Changes that affect many records at once must also wait for writers that
 * hold only record locks.  For them every writer that takes a record lock
 * holds AccessShareLock on the relation sor.write_fence, which they lock
 * AccessExclusive (and writers that publish records, below, they find in
 * the writers' slots).  A weak
 * relation lock takes PostgreSQL's fast path: it never touches the shared
 * lock table, so all writers taking it costs them nothing, where a shared
 * lock on one object per domain made every writer of the domain contend for
 * one lock partition.  The price is that those rare changes (a default
 * owner's takeover, a change of the local site, a bulk hand-off) wait for
 * the writers of every domain.
 *
 * Escalation never waits (it would deadlock with a hand-off that holds the
 * domain lock and waits for one of our record locks): when the domain lock
 * is not free at once, more record locks are taken instead.
 *
 * Published records.  A record lock in the shared lock table costs a
 * writer a partition lock and two shared hash table entries to take, and
 * as much again to release at commit: the largest part of what sor adds to
 * a single-row write.  With sor in shared_preload_libraries, the first
 * SOR_PUBLISHED_RECORDS records that a transaction writes are instead
 * published in the backend's own slot of shared memory, with the
 * transaction's virtual transaction ID, under the slot's spinlock, which
 * only a hand-off ever contends for; such a writer takes no lock at all,
 * not even sor.write_fence's.  A hand-off of a record
 *
 *	1. announces itself: it counts one more hand-off in progress in the
 *	   record's stripe (one of SOR_HANDOFF_STRIPES counters, by hash);
 *	2. takes the record's exclusive lock, as it always does, which waits
 *	   for writers that hold the record's lock in the lock table;
 *	3. reads every slot and waits for the transaction of each slot that
 *	   publishes the record (VirtualXactLock(), a lock-table wait that the
 *	   deadlock detector sees);
 *	4. takes the lock of the record's prepared writers (below).
 *
 * A change that waits for the writers of every record does the same with a
 * counter of its own (SOR_EVERY_RECORD), which every writer also reads, and
 * waits for every transaction that has published any record.  A slot names
 * its database; hand-offs wait for the writers of their own database only
 * (the counters are shared by all databases, which costs only a writer of
 * another database the lock-table path).
 *
 * A writer publishes a record only while the record's stripe and that
 * counter count no hand-off, and reads them under its slot's spinlock.  A
 * hand-off announces before it takes any slot's spinlock, so for every slot
 * either the writer saw the announcement, and takes the record's lock in the
 * lock table instead (which waits for the hand-off to end), or the hand-off
 * sees the published record and waits for it.  The count is taken back after
 * the hand-off's transaction has sent its invalidations and released its
 * locks (a resource release callback), so a writer that publishes after it
 * and then takes in invalidations sees the new owner.  A slot's records
 * stay published until the transaction ends, or the subtransaction that
 * published them rolls back; a hand-off that found one waits for the
 * whole transaction, which may be longer than it must, never less.
 *
 * PREPARE TRANSACTION hands the transaction to a process that has no slot:
 * a prepared writer first takes a lock-table lock for each record it
 * published (prepare_record_locks()), and a transaction that announced
 * hand-offs cannot be prepared.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "sor.h"

/* Records a transaction may publish in its slot (then the lock table). */
#define SOR_PUBLISHED_RECORDS	SOR_LOCK_ESCALATION_THRESHOLD

/*
 * Counters of hand-offs in progress: one per stripe of record hashes, and
 * one more for the changes that wait for the writers of every record.
 */
#define SOR_HANDOFF_STRIPES		4096
#define SOR_EVERY_RECORD		SOR_HANDOFF_STRIPES

/* The index of this process among all PGPROCs. */
#if PG_VERSION_NUM >= 170000
#define MyProcIndex				MyProcNumber
#else
#define MyProcIndex				(MyProc->pgprocno)
#endif

/*
 * One backend's published records: of its transaction vxid, in database
 * dboid (hand-offs wait for the writers of their own database only).
 */
typedef struct PublishedRecords
{
	slock_t		mutex;
	int			nrecords;
	Oid			dboid;
	VirtualTransactionId vxid;
	uint64		records[SOR_PUBLISHED_RECORDS];
} PublishedRecords;

/* A slot on cache lines of its own: backends never share one. */
typedef union PublishedRecordsSlot
{
	PublishedRecords slot;
	char		pad[3 * PG_CACHE_LINE_SIZE];
} PublishedRecordsSlot;

StaticAssertDecl(sizeof(PublishedRecords) <= 3 * PG_CACHE_LINE_SIZE,
				 "PublishedRecords does not fit its padding");

typedef struct RecordLockShmem
{
	pg_atomic_uint32 handoffs[SOR_HANDOFF_STRIPES + 1];
	int			nslots;
	PublishedRecordsSlot slots[FLEXIBLE_ARRAY_MEMBER];
} RecordLockShmem;

static RecordLockShmem *record_locks = NULL;

/* The key of the SOR_LOCK_PREPARED_WRITE lock that stands for every record */
#define PREPARED_WRITE_OF_ANY_RECORD	0

/* The subtransaction that published each record of this backend's slot. */
static SubTransactionId published_in[SOR_PUBLISHED_RECORDS];

/* The stripes this transaction announced hand-offs in (may repeat). */
static int *announced = NULL;
static int	n_announced = 0;
static int	max_announced = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
set_domain_tag(LOCKTAG *tag, const char *domain)
{
	uint64		h = hash_bytes_extended((const unsigned char *) domain,
										strlen(domain), 0);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 SOR_LOCK_DOMAIN);
}

/*
 * The hash that names a record, in its lock and in the ownership cache:
 * of "domain\0key", so that ("ab", "c") and ("a", "bc") differ.
 */
uint64
sor_record_hash(const char *domain, const char *key)
{
	uint64		h;

	h = hash_bytes_extended((const unsigned char *) domain, strlen(domain) + 1, 0);
	return hash_bytes_extended((const unsigned char *) key, strlen(key), h);
}

static void
set_record_tag(LOCKTAG *tag, uint64 record_hash, uint16 lock_class)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (record_hash >> 32),
						 (uint32) record_hash, lock_class);
}

static Size
record_locks_size(void)
{
	return add_size(offsetof(RecordLockShmem, slots),
					mul_size(MaxBackends, sizeof(PublishedRecordsSlot)));
}

static void
record_locks_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(record_locks_size());
}

static void
record_locks_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	record_locks = ShmemInitStruct("sor record locks", record_locks_size(),
								   &found);
	if (!found)
	{
		for (int i = 0; i <= SOR_HANDOFF_STRIPES; i++)
			pg_atomic_init_u32(&record_locks->handoffs[i], 0);
		record_locks->nslots = MaxBackends;
		for (int i = 0; i < MaxBackends; i++)
		{
			PublishedRecords *slot = &record_locks->slots[i].slot;

			SpinLockInit(&slot->mutex);
			slot->nrecords = 0;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* This backend's slot, or NULL (no shared memory, or no slot for it). */
static PublishedRecords *
my_slot(void)
{
	if (record_locks == NULL || MyProc == NULL ||
		MyProcIndex < 0 || MyProcIndex >= record_locks->nslots)
		return NULL;
	return &record_locks->slots[MyProcIndex].slot;
}

/* How many records this transaction has published in its slot. */
static int
published_by_this_transaction(PublishedRecords *slot)
{
	VirtualTransactionId vxid;

	GET_VXID_FROM_PGPROC(vxid, *MyProc);
	return VirtualTransactionIdEquals(slot->vxid, vxid) ? slot->nrecords : 0;
}

/*
 * Publish a record that this transaction writes, unless its slot is full
 * or a hand-off is in progress in the record's stripe (see the header
 * comment).  Returns whether the record is published; *newly tells whether
 * it was not before.
 */
static bool
publish_record(uint64 record_hash, bool *newly)
{
	PublishedRecords *slot = my_slot();
	pg_atomic_uint32 *handoffs;
	int			n;

	*newly = false;
	if (slot == NULL)
		return false;

	/* only this backend changes its slot: it reads it without the spinlock */
	n = published_by_this_transaction(slot);
	for (int i = 0; i < n; i++)
	{
		if (slot->records[i] == record_hash)
			return true;
	}
	if (n >= SOR_PUBLISHED_RECORDS)
		return false;

	handoffs = record_locks->handoffs;
	SpinLockAcquire(&slot->mutex);
	if (pg_atomic_read_u32(&handoffs[record_hash % SOR_HANDOFF_STRIPES]) == 0 &&
		pg_atomic_read_u32(&handoffs[SOR_EVERY_RECORD]) == 0)
	{
		if (n == 0)
		{
			slot->dboid = MyDatabaseId;
			GET_VXID_FROM_PGPROC(slot->vxid, *MyProc);
		}
		published_in[n] = GetCurrentSubTransactionId();
		slot->records[n] = record_hash;
		slot->nrecords = n + 1;
		*newly = true;
	}
	SpinLockRelease(&slot->mutex);

	/*
	 * The invalidations that a hand-off sent before its count went down are
	 * seen by the caller's AcceptInvalidationMessages() from here on.
	 */
	if (*newly)
		pg_memory_barrier();
	return *newly;
}

/*
 * Count a hand-off in progress in a stripe (SOR_EVERY_RECORD: a change that
 * waits for the writers of every record) until the transaction ends.
 * Without shared memory it is only remembered, for PREPARE.
 */
static void
announce_handoff(int stripe)
{
	if (n_announced == max_announced)
	{
		int			n = Max(16, 2 * max_announced);

		announced = announced == NULL ?
			MemoryContextAlloc(TopMemoryContext, n * sizeof(int)) :
			repalloc(announced, n * sizeof(int));
		max_announced = n;
	}
	if (record_locks != NULL)
		pg_atomic_fetch_add_u32(&record_locks->handoffs[stripe], 1);
	announced[n_announced++] = stripe;
}

/* Take back the last announcement, of a change that did not go ahead. */
static void
withdraw_announcement(void)
{
	int			stripe = announced[--n_announced];

	if (record_locks != NULL)
		pg_atomic_fetch_sub_u32(&record_locks->handoffs[stripe], 1);
}

/*
 * Wait for every other transaction of this database that has published a
 * record (any record, when record_hash is NULL): after the hand-off was
 * announced, no more can publish it.  Without wait, returns false at once
 * instead of waiting for a transaction that is still open.
 */
static bool
wait_for_publishers(const uint64 *record_hash, bool wait)
{
	PublishedRecords *mine = my_slot();

	if (record_locks == NULL)
		return true;

	for (int i = 0; i < record_locks->nslots; i++)
	{
		PublishedRecords *slot = &record_locks->slots[i].slot;
		VirtualTransactionId vxid;
		bool		published = false;

		if (slot == mine)
			continue;
		SpinLockAcquire(&slot->mutex);
		if (slot->dboid == MyDatabaseId)
		{
			for (int j = 0; j < slot->nrecords && !published; j++)
				published = (record_hash == NULL ||
							 slot->records[j] == *record_hash);
		}
		vxid = slot->vxid;
		SpinLockRelease(&slot->mutex);

		/* returns true at once if that transaction has ended */
		if (published && !VirtualXactLock(vxid, wait))
			return false;
	}
	return true;
}

/*
 * At the end of a transaction, after its invalidations are sent and its
 * locks released: the hand-offs it announced are over.
 */
static void
end_announced_handoffs(ResourceReleasePhase phase, bool isCommit,
					   bool isTopLevel, void *arg)
{
	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || !isTopLevel)
		return;
	for (int i = 0; i < n_announced && record_locks != NULL; i++)
		pg_atomic_fetch_sub_u32(&record_locks->handoffs[announced[i]], 1);
	n_announced = 0;
}

/*
 * A rolled back subtransaction takes back the records it published, as it
 * releases the locks it took: those published in it or in any of its
 * subtransactions, which all started after it.
 */
static void
unpublish_aborted_records(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	PublishedRecords *slot = my_slot();
	int			kept = 0;

	if (event != SUBXACT_EVENT_ABORT_SUB || slot == NULL ||
		published_by_this_transaction(slot) == 0)
		return;

	SpinLockAcquire(&slot->mutex);
	for (int i = 0; i < slot->nrecords; i++)
	{
		if (published_in[i] < mySubid)
		{
			published_in[kept] = published_in[i];
			slot->records[kept++] = slot->records[i];
		}
	}
	slot->nrecords = kept;
	SpinLockRelease(&slot->mutex);
}

/*
 * Before PREPARE TRANSACTION: the prepared transaction keeps the locks of
 * the lock table only, so take them for the published records; refuse if
 * this transaction announced hand-offs, which no one could take back (with
 * or without shared memory, so that a transaction behaves the same).
 *
 * A hand-off of a published record may hold the record's lock already and
 * wait for this transaction: so a prepared writer takes a lock of another
 * class, SOR_LOCK_PREPARED_WRITE, which a hand-off takes only after that
 * wait, when this transaction is prepared: one per record, and one that
 * the changes waiting for the writers of every record take.
 */
static void
prepare_record_locks(XactEvent event, void *arg)
{
	PublishedRecords *slot = my_slot();
	LOCKTAG		tag;

	if (event != XACT_EVENT_PRE_PREPARE)
		return;
	if (n_announced > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that has changed ownership"),
				 errhint("Change ownership in a transaction that commits at once.")));

	if (slot == NULL || published_by_this_transaction(slot) == 0)
		return;
	set_record_tag(&tag, PREPARED_WRITE_OF_ANY_RECORD, SOR_LOCK_PREPARED_WRITE);
	(void) LockAcquire(&tag, ShareLock, false, false);
	for (int i = 0; i < slot->nrecords; i++)
	{
		set_record_tag(&tag, slot->records[i], SOR_LOCK_PREPARED_WRITE);
		(void) LockAcquire(&tag, ShareLock, false, false);
	}
}

/*
 * Called from _PG_init.  Without shared_preload_libraries there is no
 * shared memory: every record lock is then taken in the lock table.
 */
void
sor_lock_init(void)
{
	RegisterResourceReleaseCallback(end_announced_handoffs, NULL);
	RegisterXactCallback(prepare_record_locks, NULL);
	RegisterSubXactCallback(unpublish_aborted_records, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = record_locks_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = record_locks_shmem_startup;
}

/* Per domain: the locks the current transaction holds for writing. */
typedef struct WriteLockState
{
	char		domain[256];	/* hash key */
	LocalTransactionId lxid;
	int			record_locks;	/* distinct record locks taken in lxid */
	bool		escalated;
	SubTransactionId escalated_in;	/* the domain lock was last asked for */
} WriteLockState;

static HTAB *write_lock_state = NULL;
static WriteLockState *last_state = NULL;	/* of the last call */

static WriteLockState *
get_write_lock_state(const char *domain)
{
	char		key[256];
	WriteLockState *state;
	bool		found;

	/* the domain of the last call, often in the transaction after it */
	if (last_state != NULL && strcmp(last_state->domain, domain) == 0)
	{
		state = last_state;
		found = true;
	}
	else
	{
		if (write_lock_state == NULL)
		{
			HASHCTL		ctl;

			ctl.keysize = sizeof(key);
			ctl.entrysize = sizeof(WriteLockState);
			write_lock_state = hash_create("sor write locks", 16, &ctl,
										   HASH_ELEM | HASH_STRINGS);
		}
		memset(key, 0, sizeof(key));
		strlcpy(key, domain, sizeof(key));
		state = hash_search(write_lock_state, key, HASH_ENTER, &found);
	}
	if (!found || state->lxid != MyLocalTransactionId)
	{
		state->lxid = MyLocalTransactionId;
		state->record_locks = 0;
		state->escalated = false;
		state->escalated_in = InvalidSubTransactionId;
	}
	last_state = state;
	return state;
}

/*
 * Whether this transaction surely holds the locks that let it write every
 * record of domain: it escalated, and asked for the domain lock in the
 * current subtransaction (a rolled back subtransaction releases its locks,
 * so after a subtransaction ends they are asked for again).  Then a write
 * needs no lock calls at all.
 */
bool
sor_domain_write_locked(const char *domain)
{
	WriteLockState *state = get_write_lock_state(domain);

	return state->escalated &&
		state->escalated_in == GetCurrentSubTransactionId();
}

/*
 * Lock a record for writing until the end of the transaction: publish it
 * in this backend's slot, or else take its lock in the lock table.
 *
 * When a lock is newly granted the caller may have waited for a hand-off to
 * commit, so the invalidations it sent are taken in here; the caller must
 * then look its cache entries up again (sor_cache_generation() tells).
 *
 * The locks are asked for on every call, even when this transaction took
 * them before: a rolled back subtransaction may have released them, and
 * asking for a lock already held is a local hash probe.
 */
void
sor_lock_record_for_write(const char *domain, uint64 record_hash)
{
	WriteLockState *state = get_write_lock_state(domain);
	LOCKTAG		tag;
	bool		newly_locked = false;

	/* a published record needs no lock, not even sor.write_fence's */
	if (!state->escalated && publish_record(record_hash, &newly_locked))
	{
		if (newly_locked)
		{
			state->record_locks++;
			AcceptInvalidationMessages();
		}
		return;
	}

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, sor_write_fence());
	if (LockAcquire(&tag, AccessShareLock, false, false) != LOCKACQUIRE_ALREADY_HELD)
		newly_locked = true;

	if (state->escalated)
	{
		set_domain_tag(&tag, domain);
		if (LockAcquire(&tag, ShareLock, false, false) != LOCKACQUIRE_ALREADY_HELD)
			newly_locked = true;
		state->escalated_in = GetCurrentSubTransactionId();
	}
	else
	{
		set_record_tag(&tag, record_hash, SOR_LOCK_RECORD);
		if (LockAcquire(&tag, ShareLock, false, false) != LOCKACQUIRE_ALREADY_HELD)
		{
			newly_locked = true;
			if (++state->record_locks > SOR_LOCK_ESCALATION_THRESHOLD)
			{
				set_domain_tag(&tag, domain);
				if (LockAcquire(&tag, ShareLock, false, true) != LOCKACQUIRE_NOT_AVAIL)
				{
					state->escalated = true;
					state->escalated_in = GetCurrentSubTransactionId();
				}
			}
		}
	}

	if (newly_locked)
		AcceptInvalidationMessages();
}

/*
 * Lock a whole domain as sor_lock_domain_for_handoff does, if that needs no
 * wait.
 */
static bool
lock_domain_without_waiting(const char *domain)
{
	LOCKTAG		tag;

	announce_handoff(SOR_EVERY_RECORD);
	if (!wait_for_publishers(NULL, false))
	{
		withdraw_announcement();
		return false;
	}
	SET_LOCKTAG_RELATION(tag, MyDatabaseId, sor_write_fence());
	if (LockAcquire(&tag, AccessExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
	{
		withdraw_announcement();
		return false;
	}
	set_domain_tag(&tag, domain);
	if (LockAcquire(&tag, AccessExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return false;
	set_record_tag(&tag, PREPARED_WRITE_OF_ANY_RECORD, SOR_LOCK_PREPARED_WRITE);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Lock a record for a change of its owner until the end of the transaction:
 * waits for every open transaction that has written the record, whether it
 * holds the record's lock or published the record.
 *
 * A transaction that hands off many records (sor.takeover_site(), or its
 * replicated copy) locks their whole domain after
 * SOR_LOCK_ESCALATION_THRESHOLD records, when it can without waiting.
 */
void
sor_lock_record_for_handoff(const char *domain, const char *key)
{
	static LocalTransactionId handoff_lxid = InvalidLocalTransactionId;
	static int	handoff_locks = 0;
	static char *whole_domain = NULL;	/* locked whole in whole_subid */
	static SubTransactionId whole_subid = InvalidSubTransactionId;
	LOCKTAG		tag;

	if (handoff_lxid != MyLocalTransactionId)
	{
		handoff_lxid = MyLocalTransactionId;
		handoff_locks = 0;
		whole_subid = InvalidSubTransactionId;
	}

	if (whole_subid == GetCurrentSubTransactionId() &&
		strcmp(whole_domain, domain) == 0)
	{
		/* this subtransaction holds the whole domain already */
	}
	else if (handoff_locks >= SOR_LOCK_ESCALATION_THRESHOLD &&
			 lock_domain_without_waiting(domain))
	{
		/* the whole domain is ours: no record lock needed */
		if (whole_domain != NULL)
			pfree(whole_domain);
		whole_domain = MemoryContextStrdup(TopMemoryContext, domain);
		whole_subid = GetCurrentSubTransactionId();
	}
	else
	{
		uint64		record_hash = sor_record_hash(domain, key);

		announce_handoff(record_hash % SOR_HANDOFF_STRIPES);
		set_domain_tag(&tag, domain);
		(void) LockAcquire(&tag, RowExclusiveLock, false, false);
		set_record_tag(&tag, record_hash, SOR_LOCK_RECORD);
		if (LockAcquire(&tag, ExclusiveLock, false, false) != LOCKACQUIRE_ALREADY_HELD)
			handoff_locks++;
		(void) wait_for_publishers(&record_hash, true);
		set_record_tag(&tag, record_hash, SOR_LOCK_PREPARED_WRITE);
		(void) LockAcquire(&tag, ExclusiveLock, false, false);
	}
	AcceptInvalidationMessages();
}

/*
 * Lock a whole domain for a change of its default owner (or of the local
 * site): waits for every open transaction that has written any record of
 * the domain, and of any other.
 */
void
sor_lock_domain_for_handoff(const char *domain)
{
	LOCKTAG		tag;

	announce_handoff(SOR_EVERY_RECORD);
	SET_LOCKTAG_RELATION(tag, MyDatabaseId, sor_write_fence());
	(void) LockAcquire(&tag, AccessExclusiveLock, false, false);
	set_domain_tag(&tag, domain);
	(void) LockAcquire(&tag, AccessExclusiveLock, false, false);
	(void) wait_for_publishers(NULL, true);
	set_record_tag(&tag, PREPARED_WRITE_OF_ANY_RECORD, SOR_LOCK_PREPARED_WRITE);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	AcceptInvalidationMessages();
}

/*
 * Lock a domain so that none of its records changes owner until the end of
 * the transaction (the domain lock of a writer that escalated): waits for
 * the hand-offs of the domain in progress.
 */
void
sor_lock_domain_against_handoffs(const char *domain)
{
	LOCKTAG		tag;

	set_domain_tag(&tag, domain);
	(void) LockAcquire(&tag, ShareLock, false, false);
	AcceptInvalidationMessages();
}
