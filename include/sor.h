/*-------------------------------------------------------------------------
 *
 * sor.h
 *	  Declarations shared by the parts of the sor extension.
 *
 * sor enforces the system-of-record rule: every record of a registered
 * table is written at exactly one site, its owner.  The parts are:
 *
 *	catalog.c	backend-local caches of the sor catalog (sites, domains,
 *				registered tables, ownership entries) and their invalidation
 *	lock.c		the record and domain locks that keep writes and ownership
 *				hand-offs from interleaving
 *	enforce.c	the enforcement trigger and the catalog triggers, and the
 *				rules for changes that arrive by replication
 *	shared_cache.c	ownership entries in shared memory, for every backend
 *	stats.c		counts of refused writes
 *	functions.c	SQL-callable functions written in C
 *	guard.c		the event trigger that keeps sor's triggers in place
 *	queue.c		running queued commands (workers and sor.drain()), and
 *				the planner's estimates of the queue's tables
 *	launcher.c	shared memory, the launcher, waking the workers
 *	worker.c	a command worker
 *	sor.c		settings and start-up
 *
 *-------------------------------------------------------------------------
 */
#ifndef SOR_H
#define SOR_H

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "storage/lockdefs.h"
#include "utils/relcache.h"

/*
 * Advisory lock classes of sor's own (LOCKTAG field4).  pg_advisory_lock()
 * uses 1 and 2, so these never collide with an application's locks.
 */
#define SOR_LOCK_RECORD		0x5301	/* one record: (domain, key) */
#define SOR_LOCK_DOMAIN		0x5302	/* one domain */
#define SOR_LOCK_GROUP		0x5303	/* the consumer of one command group */
#define SOR_LOCK_ENQUEUE	0x5304	/* the producers of one command group */
#define SOR_LOCK_PREPARED_WRITE	0x5305	/* one record, by a prepared writer */

/*
 * A transaction that writes more distinct records of one domain than this
 * stops taking record locks and holds a share lock on the whole domain.
 */
#define SOR_LOCK_ESCALATION_THRESHOLD 16

/* The local transaction ID of this backend's transaction (storage/proc.h). */
#if PG_VERSION_NUM >= 170000
#define MyLocalTransactionId (MyProc->vxid.lxid)
#else
#define MyLocalTransactionId (MyProc->lxid)
#endif

/* Whether the ownership cache holds every entry of a domain. */
typedef enum SorEntriesCached
{
	SOR_ENTRIES_NOT_YET = 0,	/* not tried since the domain was loaded */
	SOR_ENTRIES_ALL,			/* all of them: a key not cached has none */
	SOR_ENTRIES_SOME			/* too many to load at once */
} SorEntriesCached;

/* Cached facts about one domain. */
typedef struct SorDomain
{
	char		name[256];		/* hash key */
	Oid			key_type;		/* base type of the domain's keys */
	FmgrInfo	key_input;
	Oid			key_ioparam;
	FmgrInfo	key_output;
	bool		has_default;	/* has a default owner */
	char		default_site[NAMEDATALEN];
	int64		default_epoch;
	bool		has_entries;	/* some key has an ownership entry */
	SorEntriesCached entries_cached;	/* see sor_lookup_owner() */
	/* while entries_cached is ALL: the entries' key digests, sorted */
	uint64	   *entry_digests;	/* NULL: not known */
	int			n_entry_digests;
	/* the number of its name in the shared cache (shared_cache.c); -1: not
	 * asked yet */
	int32		shared_cache_name;
	/* a bulk write's lookups (sor_bulk_owner()), in one transaction */
	struct BulkOwners *bulk_owners;
	LocalTransactionId bulk_lxid;
	uint64		bulk_generation;
} SorDomain;

/* Cached facts about one table that is registered or a partition of one. */
typedef struct SorTable
{
	Oid			relid;			/* hash key */
	SorDomain  *domain;
	AttrNumber	key_attnum;		/* in this relation (partitions may differ) */
	Oid			key_base_type;	/* of the key column */
	FmgrInfo	key_output;
} SorTable;

/* Who owns one record. */
typedef struct SorOwnership
{
	bool		owned;
	char		site[NAMEDATALEN];
	int64		epoch;
	bool		acks_missing;	/* handed to this site, not yet acknowledged */
} SorOwnership;

/* State of a command worker, in shared memory. */
typedef enum SorSlotState
{
	SOR_SLOT_FREE = 0,
	SOR_SLOT_STARTING,
	SOR_SLOT_IDLE,
	SOR_SLOT_RUNNING,
	SOR_SLOT_NO_EXTENSION		/* found no sor in its database: exiting */
} SorSlotState;

typedef struct SorWorkerSlot
{
	SorSlotState state;
	Oid			dboid;
	int			pid;
	struct PGPROC *proc;		/* latch to set; NULL while not running */
	int64		commands_run;
	TimestampTz started_at;
	char		group_key[NAMEDATALEN];	/* running now; truncated */
} SorWorkerSlot;

/* sor.c: configuration */
extern int	sor_workers;
extern int	sor_batch_size;
extern int	sor_retry_limit;
extern int	sor_retry_backoff;
extern int	sor_retry_backoff_max;
extern int	sor_idle_wakeup;
extern int	sor_shared_cache_entries;

/* catalog.c */
extern void sor_cache_init(void);
extern void sor_cache_revalidate(void);
extern uint64 sor_cache_generation(void);
extern Oid	sor_write_fence(void);
extern const char *sor_local_site(void);
extern SorDomain *sor_lookup_domain(const char *name, bool missing_ok);
extern SorTable *sor_lookup_table(Oid relid);
extern void sor_lookup_owner(SorDomain *domain, const char *key,
							 uint64 record_hash, bool write_locked,
							 SorOwnership *result);
extern bool sor_key_has_no_entry(SorTable *table, Datum key);
extern bool sor_bulk_owner(SorTable *table, Datum key, SorOwnership *result);
extern void sor_bulk_remember_owner(SorTable *table, Datum key,
									const SorOwnership *ownership);
extern char *sor_canonical_key(SorDomain *domain, const char *key);
extern int64 sor_prewarm_shared_cache(SorDomain *domain);
extern char *sor_missing_acks(const char *domain, const char *key);
extern Oid	sor_key_family_type(Oid typid);
extern bool sor_is_catalog_relation(Oid relid);

/* lock.c */
extern void sor_lock_init(void);
extern uint64 sor_record_hash(const char *domain, const char *key);
extern void sor_lock_record_for_write(const char *domain, uint64 record_hash);
extern bool sor_domain_write_locked(const char *domain);
extern void sor_lock_record_for_handoff(const char *domain, const char *key);
extern void sor_lock_domain_for_handoff(const char *domain);
extern void sor_lock_domain_against_handoffs(const char *domain);

/* shared_cache.c */
extern void sor_shared_cache_init(void);
extern bool sor_shared_cache_get(Oid owner_entry, SorDomain *domain,
								 const char *key, uint64 record_hash,
								 bool *has_entry, SorOwnership *entry);
extern uint32 sor_shared_cache_generation(void);
extern bool sor_shared_cache_put(Oid owner_entry, SorDomain *domain,
								 const char *key, uint64 record_hash,
								 const SorOwnership *entry, uint32 generation);
extern void sor_shared_cache_check_usable(void);
extern void sor_shared_cache_forget(const char *domain, const char *key);
extern void sor_shared_cache_forget_all(void);
extern bool sor_transaction_changed_ownership(void);

/* stats.c */
extern void sor_stats_init(void);
extern void sor_count_refusal(Oid relid, const char *owner_site,
							  const char *sqlstate);

/* functions.c */
extern char *sor_required_text_arg(FunctionCallInfo fcinfo, int argno,
								   const char *argname);

/* launcher.c */
extern void sor_launcher_init(void);
extern void sor_wake_workers_at_commit(void);
extern SorWorkerSlot *sor_worker_slot(int index);
extern void sor_slot_lock(bool exclusive);
extern void sor_slot_unlock(void);

/* queue.c */
extern void sor_queue_init(void);
extern int	sor_run_commands(int max_commands, int max_groups, Oid invoker,
							 SorWorkerSlot *slot, long *next_due_ms);
extern bool sor_forget_empty_groups(void);

#endif							/* SOR_H */
