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
 *	ShareLock			a writer that escalated
 *	RowExclusiveLock	a hand-off of one record
 *	AccessExclusiveLock	a change of the domain's default owner, or a
 *						transaction that hands off many records of it
 *
 * Changes that affect many records at once must also wait for writers that
 * hold only record locks.  For them every writer holds AccessShareLock on
 * the relation sor.write_fence, which they lock AccessExclusive.  A weak
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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"

#include "sor.h"

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
set_record_tag(LOCKTAG *tag, uint64 record_hash)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (record_hash >> 32),
						 (uint32) record_hash, SOR_LOCK_RECORD);
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

	if (last_state != NULL && last_state->lxid == MyLocalTransactionId &&
		strcmp(last_state->domain, domain) == 0)
		return last_state;

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
 * Lock a record for writing until the end of the transaction.
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
		set_record_tag(&tag, record_hash);
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

/* Lock a whole domain as sor_lock_domain_for_handoff does, if free at once. */
static bool
lock_domain_without_waiting(const char *domain)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, sor_write_fence());
	if (LockAcquire(&tag, AccessExclusiveLock, false, true) == LOCKACQUIRE_NOT_AVAIL)
		return false;
	set_domain_tag(&tag, domain);
	return LockAcquire(&tag, AccessExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Lock a record for a change of its owner until the end of the transaction:
 * waits for every open transaction that has written the record.
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
	LOCKTAG		tag;

	if (handoff_lxid != MyLocalTransactionId)
	{
		handoff_lxid = MyLocalTransactionId;
		handoff_locks = 0;
	}

	if (handoff_locks >= SOR_LOCK_ESCALATION_THRESHOLD &&
		lock_domain_without_waiting(domain))
	{
		/* the whole domain is ours: no record lock needed */
	}
	else
	{
		set_domain_tag(&tag, domain);
		(void) LockAcquire(&tag, RowExclusiveLock, false, false);
		set_record_tag(&tag, sor_record_hash(domain, key));
		if (LockAcquire(&tag, ExclusiveLock, false, false) != LOCKACQUIRE_ALREADY_HELD)
			handoff_locks++;
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

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, sor_write_fence());
	(void) LockAcquire(&tag, AccessExclusiveLock, false, false);
	set_domain_tag(&tag, domain);
	(void) LockAcquire(&tag, AccessExclusiveLock, false, false);
	AcceptInvalidationMessages();
}
