/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Counts of refused writes, per database, table and owner site, in
 *	  shared memory.
 *
 * A refused write rolls back, so it cannot leave a row behind; an operator
 * still wants to see a client that keeps writing to the wrong site.  Each
 * refusal bumps a counter here, shown by sor.refused_writes.  The table
 * holds SOR_REFUSAL_SLOTS counters; when it is full, the least recently
 * refused one is reused.  Counting needs sor in shared_preload_libraries;
 * without it nothing is counted and the view is empty.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "sor.h"

#define SOR_REFUSAL_SLOTS	256

typedef struct RefusalCounter
{
	Oid			dboid;			/* InvalidOid: slot unused */
	Oid			relid;
	char		owner_site[NAMEDATALEN];
	char		sqlstate[6];	/* why: SR001, SR002 or SR005 */
	int64		refused;
	TimestampTz last_refused_at;
	char		last_application_name[NAMEDATALEN];
} RefusalCounter;

typedef struct RefusalTable
{
	LWLock	   *lock;
	RefusalCounter counters[SOR_REFUSAL_SLOTS];
} RefusalTable;

static RefusalTable *refusals = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(sor_refused_write_counts);

static void
stats_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(RefusalTable));
	RequestNamedLWLockTranche("sor refusals", 1);
}

static void
stats_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	refusals = ShmemInitStruct("sor refusals", sizeof(RefusalTable), &found);
	if (!found)
	{
		memset(refusals, 0, sizeof(RefusalTable));
		refusals->lock = &(GetNamedLWLockTranche("sor refusals"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init. */
void
sor_stats_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stats_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stats_shmem_startup;
}

/*
 * Count a write to relid refused with sqlstate (SR001 and the like) while
 * owner_site ("" for none) owns the record.
 */
void
sor_count_refusal(Oid relid, const char *owner_site, const char *sqlstate)
{
	RefusalCounter *counter = NULL;
	RefusalCounter *oldest = NULL;
	int			i;

	if (refusals == NULL)
		return;

	LWLockAcquire(refusals->lock, LW_EXCLUSIVE);
	for (i = 0; i < SOR_REFUSAL_SLOTS; i++)
	{
		RefusalCounter *c = &refusals->counters[i];

		if (c->dboid == MyDatabaseId && c->relid == relid &&
			strcmp(c->owner_site, owner_site) == 0 &&
			strcmp(c->sqlstate, sqlstate) == 0)
		{
			counter = c;
			break;
		}
		if (oldest == NULL || c->dboid == InvalidOid ||
			(oldest->dboid != InvalidOid &&
			 c->last_refused_at < oldest->last_refused_at))
			oldest = c;
	}
	if (counter == NULL)
	{
		counter = oldest;
		memset(counter, 0, sizeof(RefusalCounter));
		counter->dboid = MyDatabaseId;
		counter->relid = relid;
		strlcpy(counter->owner_site, owner_site, NAMEDATALEN);
		strlcpy(counter->sqlstate, sqlstate, sizeof(counter->sqlstate));
	}
	counter->refused++;
	counter->last_refused_at = GetCurrentTimestamp();
	strlcpy(counter->last_application_name,
			application_name ? application_name : "", NAMEDATALEN);
	LWLockRelease(refusals->lock);
}

/*
 * sor.refused_write_counts(): the counters of this database.
 */
Datum
sor_refused_write_counts(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (refusals == NULL)
		return (Datum) 0;

	LWLockAcquire(refusals->lock, LW_SHARED);
	for (i = 0; i < SOR_REFUSAL_SLOTS; i++)
	{
		RefusalCounter *c = &refusals->counters[i];
		Datum		values[6];
		bool		nulls[6] = {false};

		if (c->dboid != MyDatabaseId)
			continue;
		values[0] = ObjectIdGetDatum(c->relid);
		values[1] = CStringGetTextDatum(c->owner_site);
		nulls[1] = c->owner_site[0] == '\0';
		values[2] = CStringGetTextDatum(c->sqlstate);
		values[3] = Int64GetDatum(c->refused);
		values[4] = TimestampTzGetDatum(c->last_refused_at);
		values[5] = CStringGetTextDatum(c->last_application_name);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(refusals->lock);
	return (Datum) 0;
}
