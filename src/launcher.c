/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  Shared memory, the launcher, and waking the command workers.
 *
 * With shared_preload_libraries = 'sor', the postmaster starts one launcher
 * (a background worker without a database).  It lists the databases and
 * keeps sor.workers command workers (worker.c) running in each one where
 * the extension is installed.  A worker that finds no extension in its
 * database says so in its slot and exits; its database is probed again only
 * when a CREATE EXTENSION sor commits somewhere (sor.notify_launcher()), or
 * when a new database appears.  A worker that dies otherwise is started
 * again after SOR_RESTART_DELAY_MS, a delay that doubles while its workers
 * keep dying, up to SOR_RESTART_DELAY_MAX_MS; the databases are listed
 * again before, since DROP DATABASE ... WITH (FORCE) ends the workers of
 * the database it drops.
 *
 * Workers sleep on their latch.  A transaction that enqueues a command sets
 * a flag; when it has committed and released its locks, a resource-release
 * callback sets the latch of every worker of its database, under the lock
 * that keeps the slots' PGPROCs valid.  So a command committed while the
 * workers are idle starts at once; sor.idle_wakeup is only a fallback.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "sor.h"

#define SOR_RESTART_DELAY_MS	1000	/* after a worker died, doubling */
#define SOR_RESTART_DELAY_MAX_MS 60000
#define SOR_LAUNCHER_NAPTIME_MS	60000	/* to notice new databases */

typedef struct SorShared
{
	LWLock	   *lock;			/* protects everything below */
	PGPROC	   *launcher;
	uint64		rescan_generation;	/* counts CREATE EXTENSION sor commits */
	int			nslots;
	SorWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} SorShared;

static SorShared *shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/* set during a transaction, acted on at its commit */
static bool wake_workers_at_commit = false;
static bool wake_launcher_at_commit = false;

static Size
shared_size(void)
{
	return add_size(offsetof(SorShared, slots),
					mul_size(max_worker_processes, sizeof(SorWorkerSlot)));
}

static void
sor_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
	RequestNamedLWLockTranche("sor", 1);
}

static void
sor_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("sor", shared_size(), &found);
	if (!found)
	{
		memset(shared, 0, shared_size());
		shared->lock = &(GetNamedLWLockTranche("sor"))->lock;
		shared->nslots = max_worker_processes;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * At the end of a top-level transaction, once its locks are released (so
 * that a woken worker finds free the groups that the transaction held), set
 * the latches that its work asks for.
 */
static void
wake_after_locks(ResourceReleasePhase phase, bool isCommit, bool isTopLevel,
				 void *arg)
{
	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || !isTopLevel)
		return;
	if (isCommit && shared != NULL &&
		(wake_workers_at_commit || wake_launcher_at_commit))
	{
		LWLockAcquire(shared->lock,
					  wake_launcher_at_commit ? LW_EXCLUSIVE : LW_SHARED);
		if (wake_workers_at_commit)
		{
			for (int i = 0; i < shared->nslots; i++)
			{
				SorWorkerSlot *slot = &shared->slots[i];

				if (slot->proc != NULL && slot->dboid == MyDatabaseId)
					SetLatch(&slot->proc->procLatch);
			}
		}
		if (wake_launcher_at_commit)
		{
			shared->rescan_generation++;
			if (shared->launcher != NULL)
				SetLatch(&shared->launcher->procLatch);
		}
		LWLockRelease(shared->lock);
	}
	wake_workers_at_commit = false;
	wake_launcher_at_commit = false;
}

/*
 * COMMIT PREPARED finishes a transaction that another session may have
 * enqueued in: wake the workers, which is cheap, in case it did.
 */
static void
sor_process_utility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED)
		wake_workers_at_commit = true;

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* Wake this database's workers when the current transaction commits. */
void
sor_wake_workers_at_commit(void)
{
	wake_workers_at_commit = true;
}

/*
 * Called from _PG_init.  Everything but the transaction callback needs the
 * library in shared_preload_libraries.
 */
void
sor_launcher_init(void)
{
	BackgroundWorker worker;

	RegisterResourceReleaseCallback(wake_after_locks, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = sor_process_utility;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = sor_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = sor_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "sor", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "sor_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "sor launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "sor launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * The slot of a worker, for the worker itself.  It sets the PGPROC that
 * wake-ups signal, and clears it when it exits.
 */
SorWorkerSlot *
sor_worker_slot(int index)
{
	if (shared == NULL || index < 0 || index >= shared->nslots)
		elog(ERROR, "sor worker slot %d does not exist", index);
	return &shared->slots[index];
}

void
sor_slot_lock(bool exclusive)
{
	LWLockAcquire(shared->lock, exclusive ? LW_EXCLUSIVE : LW_SHARED);
}

void
sor_slot_unlock(void)
{
	LWLockRelease(shared->lock);
}

/*
 * sor.notify_launcher(): at commit, have the launcher look for databases
 * with sor again.  Called by CREATE EXTENSION sor.
 */
PG_FUNCTION_INFO_V1(sor_notify_launcher);
Datum
sor_notify_launcher(PG_FUNCTION_ARGS)
{
	if (shared == NULL)
		ereport(WARNING,
				(errmsg("sor background workers are not running"),
				 errdetail("The enforcement of ownership works as it is; queued commands run only when sor.drain() is called."),
				 errhint("Add sor to shared_preload_libraries and restart the server to have workers run the commands.")));
	wake_launcher_at_commit = true;
	PG_RETURN_VOID();
}

/*
 * The launcher
 */

/* What the launcher knows of one database. */
typedef struct KnownDatabase
{
	Oid			dboid;			/* hash key */
	bool		present;		/* seen in the latest scan */
	bool		no_extension;	/* a worker found no sor there */
	int			failures;		/* workers that died in a row */
	TimestampTz next_start;		/* no start before */
} KnownDatabase;

static void stop_orphaned_workers(void);

/* the launcher's handles of the workers it started, by slot */
static BackgroundWorkerHandle **handles;
/* slots whose worker the launcher asked to stop: its exit is no failure */
static bool *stopping;
/* rescan_generation when each slot's worker was started */
static uint64 *started_generation;

static void
list_databases(HTAB *known)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	HASH_SEQ_STATUS status;
	KnownDatabase *db;

	hash_seq_init(&status, known);
	while ((db = hash_seq_search(&status)) != NULL)
		db->present = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database dbform = (Form_pg_database) GETSTRUCT(tuple);
		bool		found;

		if (!dbform->datallowconn || dbform->datistemplate)
			continue;
		db = hash_search(known, &dbform->oid, HASH_ENTER, &found);
		if (!found)
		{
			db->no_extension = false;
			db->failures = 0;
			db->next_start = 0;
		}
		db->present = true;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* forget databases that are gone */
	hash_seq_init(&status, known);
	while ((db = hash_seq_search(&status)) != NULL)
		if (!db->present)
			hash_search(known, &db->dboid, HASH_REMOVE, NULL);
}

/*
 * Whether the workers of a database are due to start again after dying.
 * Then the databases are listed again first: DROP DATABASE ... WITH (FORCE)
 * ends the workers of the database it drops.
 */
static bool
restart_due(HTAB *known, TimestampTz now)
{
	HASH_SEQ_STATUS status;
	KnownDatabase *db;

	hash_seq_init(&status, known);
	while ((db = hash_seq_search(&status)) != NULL)
	{
		if (db->next_start != 0 && db->next_start <= now)
		{
			hash_seq_term(&status);
			return true;
		}
	}
	return false;
}

static void
start_worker(int index, Oid dboid)
{
	BackgroundWorker worker;
	SorWorkerSlot *slot = &shared->slots[index];

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "sor", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "sor_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "sor worker for database %u", dboid);
	strlcpy(worker.bgw_type, "sor worker", BGW_MAXLEN);
	worker.bgw_main_arg = Int32GetDatum(index);
	worker.bgw_notify_pid = MyProcPid;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	memset(slot, 0, sizeof(*slot));
	slot->state = SOR_SLOT_STARTING;
	slot->dboid = dboid;
	LWLockRelease(shared->lock);

	if (!RegisterDynamicBackgroundWorker(&worker, &handles[index]))
	{
		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		slot->state = SOR_SLOT_FREE;
		LWLockRelease(shared->lock);
		handles[index] = NULL;
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a sor worker for database %u", dboid),
				 errhint("Raise max_worker_processes.")));
	}
}

/*
 * Free the slots of workers that stopped, noting databases without sor;
 * then start or stop workers so that every database with sor has
 * sor.workers of them.  Returns how long to wait before the next restart
 * is due (or -1).
 */
static long
reconcile(HTAB *known)
{
	static uint64 seen_generation = 0;
	uint64		generation;
	HASH_SEQ_STATUS status;
	KnownDatabase *db;
	TimestampTz now = GetCurrentTimestamp();
	long		next = -1;
	int			i;

	for (i = 0; i < shared->nslots; i++)
	{
		pid_t		pid;

		if (handles[i] == NULL ||
			GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
			continue;
		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		db = hash_search(known, &shared->slots[i].dboid, HASH_FIND, NULL);
		if (db && shared->slots[i].state == SOR_SLOT_NO_EXTENSION)
		{
			/*
			 * Believe it only if no CREATE EXTENSION sor committed since the
			 * worker started: it may have looked just before one did here.
			 */
			if (started_generation[i] == shared->rescan_generation)
				db->no_extension = true;
		}
		else if (db && !db->no_extension && !stopping[i])
		{
			/* died: start again after a delay that grows while it keeps dying */
			if (shared->slots[i].started_at != 0 &&
				TimestampDifferenceExceeds(shared->slots[i].started_at, now,
										   SOR_RESTART_DELAY_MAX_MS))
				db->failures = 0;
			db->failures = Min(db->failures + 1, 16);
			db->next_start = TimestampTzPlusMilliseconds(now,
														 Min((int64) SOR_RESTART_DELAY_MS << (db->failures - 1),
															 SOR_RESTART_DELAY_MAX_MS));
		}
		memset(&shared->slots[i], 0, sizeof(SorWorkerSlot));
		LWLockRelease(shared->lock);
		pfree(handles[i]);
		handles[i] = NULL;
		stopping[i] = false;
	}

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	generation = shared->rescan_generation;
	LWLockRelease(shared->lock);
	if (generation != seen_generation)
	{
		seen_generation = generation;
		hash_seq_init(&status, known);
		while ((db = hash_seq_search(&status)) != NULL)
		{
			if (db->no_extension)
			{
				db->no_extension = false;
				db->failures = 0;
				db->next_start = 0;
			}
		}
	}

	if (restart_due(known, now))
		list_databases(known);

	hash_seq_init(&status, known);
	while ((db = hash_seq_search(&status)) != NULL)
	{
		int			running = 0;
		int			wanted = db->no_extension ? 0 : sor_workers;

		for (i = 0; i < shared->nslots; i++)
		{
			if (handles[i] == NULL || shared->slots[i].dboid != db->dboid)
				continue;
			if (++running > wanted)
			{
				TerminateBackgroundWorker(handles[i]);
				stopping[i] = true;
			}
		}
		if (running >= wanted)
			continue;
		if (db->next_start > now)
		{
			long		wait = TimestampDifferenceMilliseconds(now, db->next_start);

			next = (next < 0 || wait < next) ? wait : next;
			continue;
		}
		for (i = 0; i < shared->nslots && running < wanted; i++)
		{
			if (handles[i] != NULL)
				continue;
			started_generation[i] = generation;
			start_worker(i, db->dboid);
			running++;
		}
		db->next_start = 0;
	}
	return next;
}

PGDLLEXPORT void sor_launcher_main(Datum main_arg);

void
sor_launcher_main(Datum main_arg)
{
	HASHCTL		ctl;
	HTAB	   *known;
	TimestampTz last_scan = 0;
	uint64		scanned_generation = 0;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	stop_orphaned_workers();
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	shared->launcher = MyProc;
	LWLockRelease(shared->lock);

	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(KnownDatabase);
	known = hash_create("sor databases", 16, &ctl, HASH_ELEM | HASH_BLOBS);
	handles = palloc0(sizeof(BackgroundWorkerHandle *) * shared->nslots);
	stopping = palloc0(sizeof(bool) * shared->nslots);
	started_generation = palloc0(sizeof(uint64) * shared->nslots);

	while (!ShutdownRequestPending)
	{
		long		timeout;
		long		restart;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (TimestampDifferenceExceeds(last_scan, GetCurrentTimestamp(),
									   SOR_LAUNCHER_NAPTIME_MS) ||
			scanned_generation != shared->rescan_generation)
		{
			scanned_generation = shared->rescan_generation;
			list_databases(known);
			last_scan = GetCurrentTimestamp();
		}
		restart = reconcile(known);

		timeout = SOR_LAUNCHER_NAPTIME_MS;
		if (restart >= 0 && restart < timeout)
			timeout = restart;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	shared->launcher = NULL;
	LWLockRelease(shared->lock);

	/*
	 * Exit with 1, so that the postmaster starts the launcher again, unless
	 * it is shutting down itself: a launcher stopped by pg_terminate_backend
	 * must not leave the databases without workers for good.
	 */
	proc_exit(1);
}

/*
 * A launcher that starts again finds the slots of the workers its
 * predecessor started, but has no handles for them: stop those workers and
 * wait until they are gone, so that every slot is free and known.
 */
static void
stop_orphaned_workers(void)
{
	for (int tries = 0; tries < 500; tries++)
	{
		bool		alive = false;

		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		for (int i = 0; i < shared->nslots; i++)
		{
			SorWorkerSlot *slot = &shared->slots[i];

			if (slot->pid != 0)
			{
				(void) kill(slot->pid, SIGTERM);
				alive = true;
			}
			else
				memset(slot, 0, sizeof(SorWorkerSlot));
		}
		LWLockRelease(shared->lock);
		if (!alive)
			return;
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
	ereport(ERROR,
			(errmsg("sor workers of a previous launcher did not stop")));
}

/*
 * sor.worker_status(): one row per worker slot in use.
 */
PG_FUNCTION_INFO_V1(sor_worker_status);
Datum
sor_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SorWorkerSlot *slots;
	static const char *const state_names[] = {
		[SOR_SLOT_FREE] = "free",
		[SOR_SLOT_STARTING] = "starting",
		[SOR_SLOT_IDLE] = "idle",
		[SOR_SLOT_RUNNING] = "running",
		[SOR_SLOT_NO_EXTENSION] = "stopping",
	};

	InitMaterializedSRF(fcinfo, 0);
	if (shared == NULL)
		return (Datum) 0;

	/* copy the slots, then look names up without holding the lock */
	slots = palloc(sizeof(SorWorkerSlot) * shared->nslots);
	LWLockAcquire(shared->lock, LW_SHARED);
	memcpy(slots, shared->slots, sizeof(SorWorkerSlot) * shared->nslots);
	LWLockRelease(shared->lock);

	for (int i = 0; i < shared->nslots; i++)
	{
		SorWorkerSlot *slot = &slots[i];
		Datum		values[6];
		bool		nulls[6] = {0};
		char	   *dbname;

		if (slot->state == SOR_SLOT_FREE)
			continue;
		values[0] = Int32GetDatum(slot->pid);
		nulls[0] = slot->pid == 0;
		dbname = get_database_name(slot->dboid);
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(dbname ? dbname : ""));
		nulls[1] = dbname == NULL;
		values[2] = CStringGetTextDatum(state_names[slot->state]);
		values[3] = CStringGetTextDatum(slot->group_key);
		nulls[3] = slot->group_key[0] == '\0';
		values[4] = Int64GetDatum(slot->commands_run);
		values[5] = TimestampTzGetDatum(slot->started_at);
		nulls[5] = slot->started_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
