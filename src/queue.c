/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  Running queued commands: the engine shared by the background workers
 *	  and sor.drain(), and the locks that order producers and consumers.
 *
 * Order (C1).  sor.enqueue() takes the producer lock of its group before
 * it draws the command's id from the sequence, and keeps it until its
 * transaction ends.  So within a group, ids are drawn in the order in which
 * the enqueuing transactions commit, and a consumer that sees a command
 * also sees every earlier one.
 *
 * One consumer per group (C2).  A consumer runs a group's commands only
 * while it holds the group's consumer lock, taken without waiting (a group
 * that another consumer holds is skipped) and kept until its transaction
 * ends.  Both locks are advisory locks in lock classes of sor's own.
 *
 * Atomic completion (C3).  Each command runs in a subtransaction together
 * with the deletion of its queue row; the consumer's transaction commits
 * them all, or none.
 *
 * Failures (C4).  A command whose handler fails is rolled back alone; its
 * attempts and error are recorded, and its group waits for a backoff that
 * doubles with each attempt.  After sor.retry_limit attempts the group is
 * parked until sor.retry() or sor.skip().
 *
 * Estimates.  The queue's tables go from empty to millions of rows and
 * back between two ANALYZEs; see queue_relation_info().
 *
 * Privileges (C5).  A handler runs as the role that enqueued the command,
 * with a GUC nesting level of its own in which search_path is reset and the
 * role's and database's settings are applied, and which is thrown away
 * afterwards.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_db_role_setting.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "optimizer/plancat.h"
#include "pgstat.h"
#include "storage/bufpage.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/fmgroids.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

#include "sor.h"

#if PG_VERSION_NUM >= 170000
#define LOCAL_XID_FIELD vxid.lxid
#else
#define LOCAL_XID_FIELD lxid
#endif

/* How many ready groups one look at the queue reads; it reads on. */
#define SOR_CANDIDATE_GROUPS	64

/* How many empty groups' rows one clean-up deletes at most. */
#define SOR_FORGET_GROUPS		1000

/* True while a handler runs: it may not drain (it would re-enter its group). */
static bool in_handler = false;

/* One command, copied out of SPI's result. */
typedef struct Command
{
	int64		id;
	char	   *handler;
	Datum		payload;
	Oid			role;
} Command;

static SPIPlanPtr plan_ready_groups;
static SPIPlanPtr plan_next_due;
static SPIPlanPtr plan_commands;
static SPIPlanPtr plan_done;
static SPIPlanPtr plan_failed;
static SPIPlanPtr plan_group_after;
static SPIPlanPtr plan_forget;

/*
 * Prepare a statement for the life of the backend.  replan: plan it again
 * at every execution, with the tables' current sizes.  The queue's tables
 * go from empty to a million rows between two ANALYZEs (a bulk enqueue),
 * and a plan made while they were empty scans them whole.
 */
static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *argtypes, bool replan)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes,
										  replan ? CURSOR_OPT_CUSTOM_PLAN : 0);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
prepare_plans(void)
{
	Oid			text_int[2] = {TEXTOID, INT4OID};
	Oid			int8_text[2] = {INT8OID, TEXTOID};
	Oid			group_after[4] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID};
	Oid			ready[4] = {INT4OID, TIMESTAMPTZOID, TEXTOID, TIMESTAMPTZOID};

	if (plan_ready_groups != NULL)
		return;

	/*
	 * Ready groups with commands, in pages after ($2, $3), due by $4 (the
	 * time now, a parameter so that it bounds the index scan).
	 */
	plan_ready_groups = prepare(
		"SELECT g.group_key, g.next_attempt_at FROM sor.command_group g"
		" WHERE g.parked_at IS NULL AND g.next_attempt_at <= $4"
		" AND (g.next_attempt_at, g.group_key) > ($2, $3)"
		" AND EXISTS (SELECT FROM sor.command c WHERE c.group_key = g.group_key"
		" AND c.id > g.done_through)"
		" ORDER BY g.next_attempt_at, g.group_key LIMIT $1",
		4, ready, true);
	/* the next group in backoff that comes due after $1 (now) */
	plan_next_due = prepare(
		"SELECT pg_catalog.min(next_attempt_at) FROM sor.command_group"
		" WHERE parked_at IS NULL AND next_attempt_at > $1",
		1, &ready[3], true);
	/*
	 * Read after the group's lock is taken: is it still ready, and which
	 * commands has it above done_through (none, if it is not ready)?
	 */
	plan_commands = prepare(
		"SELECT id, handler, payload, enqueued_by::oid FROM sor.command"
		" WHERE group_key = $1"
		" AND id > (SELECT g.done_through FROM sor.command_group g"
		" WHERE g.group_key = $1 AND g.parked_at IS NULL"
		" AND g.next_attempt_at <= pg_catalog.clock_timestamp())"
		" ORDER BY id LIMIT $2",
		2, text_int, true);
	plan_done = prepare(
		"DELETE FROM sor.command WHERE id = $1",
		1, int8_text, false);
	plan_failed = prepare(
		"UPDATE sor.command SET attempts = attempts + 1, last_error = $2,"
		" last_attempt_at = pg_catalog.clock_timestamp()"
		" WHERE id = $1 RETURNING attempts",
		2, int8_text, false);
	plan_group_after = prepare(
		"UPDATE sor.command_group SET next_attempt_at = $2, parked_at = $3,"
		" done_through = GREATEST(done_through, $4)"
		" WHERE group_key = $1",
		4, group_after, false);
	plan_forget = prepare(
		"SELECT sor.forget_empty_groups($1)",
		1, &text_int[1], false);
}

static get_relation_info_hook_type prev_get_relation_info_hook = NULL;

/*
 * The planner's size of a relation of sor's queue (sor.command,
 * sor.command_group).  A VACUUM that finds the queue empty records no rows
 * in its pages; when commands come in by the million afterwards, until
 * autovacuum analyzes the table again (a minute or more later), PostgreSQL
 * takes it for empty, scales "no rows" by its pages, and the consumers'
 * queries then read a whole index for each group.  So where such a table
 * is estimated at fewer rows than pages, it is estimated instead by the
 * width of its rows, as PostgreSQL estimates a table never vacuumed, and
 * its indexes with it.  Other relations are left as they are; their test
 * is the first comparison.
 */
static void
queue_relation_info(PlannerInfo *root, Oid relid, bool inhibitparentexpansion,
					RelOptInfo *rel)
{
	Oid			nspid;
	const char *relname;
	int32		tuple_width;
	ListCell   *lc;

	if (prev_get_relation_info_hook)
		prev_get_relation_info_hook(root, relid, inhibitparentexpansion, rel);

	if (rel->tuples >= rel->pages)
		return;
	nspid = get_namespace_oid("sor", true);
	if (!OidIsValid(nspid) || get_rel_namespace(relid) != nspid)
		return;
	relname = get_rel_name(relid);
	if (relname == NULL ||
		(strcmp(relname, "command") != 0 && strcmp(relname, "command_group") != 0))
		return;

	tuple_width = get_relation_data_width(relid, NULL) +
		MAXALIGN(SizeofHeapTupleHeader) + sizeof(ItemIdData);
	rel->tuples = rint((double) (BLCKSZ - SizeOfPageHeaderData) / tuple_width *
					   rel->pages);
	foreach(lc, rel->indexlist)
	{
		IndexOptInfo *index = (IndexOptInfo *) lfirst(lc);

		index->tuples = Max(index->tuples, rel->tuples);
	}
}

/* Called once per backend from _PG_init(). */
void
sor_queue_init(void)
{
	prev_get_relation_info_hook = get_relation_info_hook;
	get_relation_info_hook = queue_relation_info;
}

static void
set_group_tag(LOCKTAG *tag, const char *group_key, uint16 lockclass)
{
	uint64		h = hash_bytes_extended((const unsigned char *) group_key,
										strlen(group_key), 0);

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 lockclass);
}

/*
 * sor.lock_group_for_enqueue(group_key text): the producer lock (see the top
 * of the file); the workers are woken when the transaction commits.
 */
PG_FUNCTION_INFO_V1(sor_lock_group_for_enqueue);
Datum
sor_lock_group_for_enqueue(PG_FUNCTION_ARGS)
{
	LOCKTAG		tag;

	set_group_tag(&tag, sor_required_text_arg(fcinfo, 0, "group key"), SOR_LOCK_ENQUEUE);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	sor_wake_workers_at_commit();
	PG_RETURN_VOID();
}

/*
 * sor.lock_group_for_change(group_key text): the consumer lock, waiting for
 * the consumer that holds it; for sor.retry() and sor.skip().
 */
PG_FUNCTION_INFO_V1(sor_lock_group_for_change);
Datum
sor_lock_group_for_change(PG_FUNCTION_ARGS)
{
	LOCKTAG		tag;

	set_group_tag(&tag, sor_required_text_arg(fcinfo, 0, "group key"), SOR_LOCK_GROUP);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	sor_wake_workers_at_commit();
	PG_RETURN_VOID();
}

static void
unlock_group(const char *group_key)
{
	LOCKTAG		tag;

	set_group_tag(&tag, group_key, SOR_LOCK_GROUP);
	(void) LockRelease(&tag, ExclusiveLock, false);
}

/* Take a group's consumer lock if it is free; it is kept until commit. */
static bool
try_lock_group(const char *group_key)
{
	LOCKTAG		tag;

	set_group_tag(&tag, group_key, SOR_LOCK_GROUP);
	return LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * Append the settings of one pg_db_role_setting entry, if there is one, to
 * *settings as "name", "value" pairs.  "role" and "session_authorization"
 * are left out: the handler runs as the enqueuing role.
 */
static void
collect_setting_entry(Relation rel, Snapshot snapshot, Oid database, Oid role,
					  List **settings)
{
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;

	ScanKeyInit(&keys[0], Anum_pg_db_role_setting_setdatabase,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(database));
	ScanKeyInit(&keys[1], Anum_pg_db_role_setting_setrole,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(role));
	scan = systable_beginscan(rel, DbRoleSettingDatidRolidIndexId, true,
							  snapshot, 2, keys);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		config = heap_getattr(tuple, Anum_pg_db_role_setting_setconfig,
										  RelationGetDescr(rel), &isnull);
		Datum	   *items;
		int			nitems;

		if (isnull)
			continue;
		deconstruct_array(DatumGetArrayTypeP(config), TEXTOID, -1, false,
						  TYPALIGN_INT, &items, NULL, &nitems);
		for (int i = 0; i < nitems; i++)
		{
			char	   *name;
			char	   *value;

			ParseLongOption(TextDatumGetCString(items[i]), &name, &value);
			if (value == NULL ||
				pg_strcasecmp(name, "role") == 0 ||
				pg_strcasecmp(name, "session_authorization") == 0)
				continue;
			*settings = lappend(*settings, name);
			*settings = lappend(*settings, value);
		}
	}
	systable_endscan(scan);
}

/*
 * The settings of the role whose command ran last in this transaction: the
 * commands of a batch mostly share a role, and read them once.
 */
static struct
{
	LocalTransactionId lxid;
	Oid			role;
	List	   *settings;		/* in TopTransactionContext */
}			last_settings;

/*
 * Reset the session's settings, set search_path to its default, and apply
 * the settings a fresh connection of role to this database would get
 * (ALTER ROLE ALL, ALTER DATABASE, ALTER ROLE, ALTER ROLE IN DATABASE, the
 * later ones winning), in the current GUC nesting level.  A setting that
 * cannot be applied here is reported and left out, as a fresh connection
 * does with one it cannot apply.
 */
static void
apply_role_settings(Oid role)
{
	ListCell   *lc;

	if (last_settings.lxid != MyProc->LOCAL_XID_FIELD || last_settings.role != role)
	{
		MemoryContext oldcontext = MemoryContextSwitchTo(TopTransactionContext);
		Relation	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
		Snapshot	snapshot = RegisterSnapshot(GetCatalogSnapshot(DbRoleSettingRelationId));
		List	   *settings = NIL;

		collect_setting_entry(rel, snapshot, InvalidOid, InvalidOid, &settings);
		collect_setting_entry(rel, snapshot, MyDatabaseId, InvalidOid, &settings);
		collect_setting_entry(rel, snapshot, InvalidOid, role, &settings);
		collect_setting_entry(rel, snapshot, MyDatabaseId, role, &settings);
		UnregisterSnapshot(snapshot);
		table_close(rel, AccessShareLock);
		MemoryContextSwitchTo(oldcontext);

		last_settings.settings = settings;
		last_settings.role = role;
		last_settings.lxid = MyProc->LOCAL_XID_FIELD;
	}

	ResetAllOptions();
	(void) set_config_option("search_path", "\"$user\", public",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SET,
							 true, 0, false);
	for (lc = list_head(last_settings.settings); lc != NULL;
		 lc = lnext(last_settings.settings, lnext(last_settings.settings, lc)))
		(void) set_config_option(lfirst(lc),
								 lfirst(lnext(last_settings.settings, lc)),
								 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SET,
								 true, WARNING, false);
}

/*
 * The handler last called in this transaction, resolved and with its
 * FmgrInfo (whose cache, e.g. a SQL function's plans, lives in the
 * transaction): consecutive commands mostly share one.  Forgotten after a
 * failure.
 */
static struct
{
	LocalTransactionId lxid;
	char	   *name;			/* in TopTransactionContext */
	Oid			oid;
	FmgrInfo	flinfo;
}			last_handler;

static FmgrInfo *
resolve_handler(const char *name, Oid *oid)
{
	if (last_handler.lxid != MyProc->LOCAL_XID_FIELD ||
		strcmp(last_handler.name, name) != 0)
	{
		last_handler.lxid = InvalidLocalTransactionId;
		last_handler.oid = DatumGetObjectId(DirectFunctionCall1(regprocedurein,
																CStringGetDatum(name)));
		fmgr_info_cxt(last_handler.oid, &last_handler.flinfo, TopTransactionContext);
		last_handler.name = MemoryContextStrdup(TopTransactionContext, name);
		last_handler.lxid = MyProc->LOCAL_XID_FIELD;
	}
	*oid = last_handler.oid;
	return &last_handler.flinfo;
}

/*
 * SET CONSTRAINTS ALL IMMEDIATE: fires the deferred triggers queued so far.
 * A batch is one transaction, so this state carries from one command to the
 * next: every handler starts in it, whatever its place in the batch.
 */
static void
set_constraints_immediate(void)
{
	ConstraintsSetStmt *stmt = makeNode(ConstraintsSetStmt);

	stmt->constraints = NIL;
	stmt->deferred = false;
	AfterTriggerSetState(stmt);
}

/*
 * Call the command's handler as its role; errors propagate.  It starts with
 * all constraints immediate (a handler that needs one deferred says SET
 * CONSTRAINTS ... DEFERRED), and what it deferred fires before it returns,
 * still as its role.  In a worker, the
 * role's statement_timeout applies to it, and whatever session state it
 * leaves (temporary objects, session locks, prepared statements) is thrown
 * away after it.  In sor.drain(), the handler of a command that another role
 * enqueued runs as a security-restricted operation, as PostgreSQL runs other
 * roles' code in maintenance commands: it cannot leave temporary objects or
 * other state in the caller's session (nor queue deferred triggers).
 */
static void
call_handler(Command *command, bool in_worker, Oid invoker)
{
	Oid			handler;
	AclResult	aclresult;
	Oid			save_userid;
	int			save_sec_context;
	int			nestlevel;
	FmgrInfo   *flinfo;

	LOCAL_FCINFO(call, 1);

	flinfo = resolve_handler(command->handler, &handler);
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(command->role)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role %u that enqueued the command no longer exists",
						command->role)));
#if PG_VERSION_NUM >= 160000
	aclresult = object_aclcheck(ProcedureRelationId, handler, command->role, ACL_EXECUTE);
#else
	aclresult = pg_proc_aclcheck(handler, command->role, ACL_EXECUTE);
#endif
	if (aclresult != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" may no longer execute function %s",
						GetUserNameFromId(command->role, false), command->handler)));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(command->role,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   (!in_worker && command->role != invoker ?
							SECURITY_RESTRICTED_OPERATION : 0));
	nestlevel = NewGUCNestLevel();
	apply_role_settings(command->role);

	InitFunctionCallInfoData(*call, flinfo, 1, InvalidOid, NULL, NULL);
	call->args[0].value = command->payload;
	call->args[0].isnull = false;
	PushActiveSnapshot(GetTransactionSnapshot());
	if (in_worker && StatementTimeout > 0)
		enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);
	in_handler = true;
	set_constraints_immediate();
	(void) FunctionCallInvoke(call);
	set_constraints_immediate();
	in_handler = false;
	if (in_worker)
		disable_timeout(STATEMENT_TIMEOUT, false);
	PopActiveSnapshot();

	/* whatever the handler SET is thrown away, like its role */
	AtEOXact_GUC(false, nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * Run one command in a subtransaction together with the deletion of its
 * queue row.  Returns NULL when it committed, else the error message (and
 * the subtransaction is rolled back).  A termination is not the handler's
 * failure: it propagates; so does a cancel in sor.drain(), where it is the
 * caller's (in a worker it can only be the handler's statement_timeout).
 */
static char *
run_command(Command *command, bool in_worker, Oid invoker)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	char	   *volatile error = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		Datum		id = Int64GetDatum(command->id);

		call_handler(command, in_worker, invoker);
		if (SPI_execute_plan(plan_done, &id, NULL, false, 0) != SPI_OK_DELETE ||
			SPI_processed != 1)
			elog(ERROR, "command " INT64_FORMAT " was run by another consumer",
				 command->id);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		in_handler = false;
		last_handler.lxid = InvalidLocalTransactionId;
		if (in_worker)
			disable_timeout(STATEMENT_TIMEOUT, false);
		edata = CopyErrorData();
		if ((edata->sqlerrcode == ERRCODE_QUERY_CANCELED && !in_worker) ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		error = psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode),
						 edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();

	/* a worker has no session state of its own: drop the handler's */
	if (in_worker)
	{
		ResetTempTableNamespace();
		DropAllPreparedStatements();
		ResetSequenceCaches();
		LockReleaseSession(USER_LOCKMETHOD);
	}
	CommandCounterIncrement();
	return error;
}

/* Whether invoker may run role's commands: it could SET ROLE to it. */
static bool
acts_for(Oid invoker, Oid role)
{
#if PG_VERSION_NUM >= 160000
	return member_can_set_role(invoker, role);
#else
	return is_member_of_role(invoker, role);
#endif
}

/* Delay before attempt n + 1 of a command that failed n times. */
static int64
backoff_ms(int attempts)
{
	int64		delay = sor_retry_backoff;

	while (--attempts > 0 && delay < sor_retry_backoff_max)
		delay *= 2;
	return Min(delay, (int64) sor_retry_backoff_max);
}

/*
 * Run up to limit commands of a group whose consumer lock this transaction
 * holds, in order, stopping at the first failure.  With a valid invoker
 * (sor.drain()), stop at the first command of a role the invoker does not
 * act for.  Returns how many committed.
 */
static int
run_group(const char *group_key, int limit, Oid invoker, bool *failed_out)
{
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Command    *commands;
	uint64		n;
	int			done = 0;
	bool		failed = false;
	bool		parked = false;
	int64		delay = 0;
	TimestampTz now;

	*failed_out = false;

	/*
	 * Not read-only: a new snapshot, taken now that the group's lock is
	 * held, sees the work of the consumer that held it before, and whether
	 * that one parked the group or made it wait.
	 */
	args[0] = CStringGetTextDatum(group_key);
	args[1] = Int32GetDatum(limit);
	if (SPI_execute_plan(plan_commands, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the commands of group \"%s\"", group_key);

	n = SPI_processed;
	commands = palloc(sizeof(Command) * (n + 1));
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	tupdesc = SPI_tuptable->tupdesc;
		bool		isnull;

		commands[i].id = DatumGetInt64(SPI_getbinval(tuple, tupdesc, 1, &isnull));
		commands[i].handler = SPI_getvalue(tuple, tupdesc, 2);
		commands[i].payload = datumCopy(SPI_getbinval(tuple, tupdesc, 3, &isnull),
										false, -1);
		commands[i].role = DatumGetObjectId(SPI_getbinval(tuple, tupdesc, 4, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);

	for (uint64 i = 0; i < n; i++)
	{
		char	   *error;

		CHECK_FOR_INTERRUPTS();
		if (OidIsValid(invoker) && !acts_for(invoker, commands[i].role))
			break;
		error = run_command(&commands[i], !OidIsValid(invoker), invoker);
		if (error == NULL)
		{
			done++;
			continue;
		}

		/* record the failure; the group waits, or is parked */
		{
			Datum		fargs[2];
			int			attempts;
			bool		isnull;

			fargs[0] = Int64GetDatum(commands[i].id);
			fargs[1] = CStringGetTextDatum(error);
			if (SPI_execute_plan(plan_failed, fargs, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
				elog(ERROR, "could not record the failure of command " INT64_FORMAT,
					 commands[i].id);
			if (SPI_processed == 0)
				break;			/* skipped meanwhile (by a handler) */
			attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1, &isnull));
			failed = true;
			parked = attempts >= sor_retry_limit;
			delay = backoff_ms(attempts);
			ereport(LOG,
					(errmsg("sor command " INT64_FORMAT " of group \"%s\" failed (attempt %d of %d): %s",
							commands[i].id, group_key, attempts, sor_retry_limit, error),
					 parked ? errdetail("The group is parked until sor.retry() or sor.skip().") : 0));
		}
		break;
	}

	*failed_out = failed;
	if (done == 0 && !failed)
		return 0;

	/* to the back of the line; or wait, or park */
	now = GetCurrentTimestamp();
	args[1] = TimestampTzGetDatum(failed ? TimestampTzPlusMilliseconds(now, delay) : now);
	args[2] = TimestampTzGetDatum(now);
	nulls[2] = parked ? ' ' : 'n';
	args[3] = Int64GetDatum(done > 0 ? commands[done - 1].id : 0);
	if (SPI_execute_plan(plan_group_after, args, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update command group \"%s\"", group_key);
	return done;
}

static void
report_slot(SorWorkerSlot *slot, const char *group_key, int done)
{
	if (slot == NULL)
		return;
	if (group_key)
		pgstat_report_activity(STATE_RUNNING,
							   psprintf("sor: running commands of group %s", group_key));
	sor_slot_lock(true);
	slot->state = group_key ? SOR_SLOT_RUNNING : SOR_SLOT_IDLE;
	strlcpy(slot->group_key, group_key ? group_key : "", NAMEDATALEN);
	slot->commands_run += done;
	sor_slot_unlock();
}

/*
 * Run up to max_commands ready commands of up to max_groups groups, in the
 * current transaction (SPI connected, a snapshot active).  Reads the ready
 * groups page by page, skipping those another consumer holds, and starts
 * over while it makes progress.  invoker: see run_group.  When nothing ran
 * and next_due_ms is given, it is set to the milliseconds until a group in
 * backoff comes due (-1: none).
 */
int
sor_run_commands(int max_commands, int max_groups, Oid invoker,
				 SorWorkerSlot *slot, long *next_due_ms)
{
	int			ran = 0;
	int			groups = 0;
	bool		progress = true;

	prepare_plans();

	while (progress && ran < max_commands && groups < max_groups)
	{
		Datum		args[4];
		bool		more = true;

		progress = false;
		args[1] = TimestampTzGetDatum(DT_NOBEGIN);
		args[2] = CStringGetTextDatum("");
		while (more && ran < max_commands && groups < max_groups)
		{
			char	  **keys;
			uint64		n;

			args[0] = Int32GetDatum(SOR_CANDIDATE_GROUPS);
			args[3] = TimestampTzGetDatum(GetCurrentTimestamp());
			if (SPI_execute_plan(plan_ready_groups, args, NULL, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read the command groups");
			n = SPI_processed;
			more = n == SOR_CANDIDATE_GROUPS;
			keys = palloc(sizeof(char *) * (n + 1));
			for (uint64 i = 0; i < n; i++)
			{
				bool		isnull;

				keys[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
				if (i == n - 1)
				{
					args[1] = SPI_getbinval(SPI_tuptable->vals[i],
											SPI_tuptable->tupdesc, 2, &isnull);
					args[2] = CStringGetTextDatum(keys[i]);
				}
			}
			SPI_freetuptable(SPI_tuptable);

			for (uint64 i = 0; i < n && ran < max_commands && groups < max_groups; i++)
			{
				int			done;
				bool		failed;

				if (!try_lock_group(keys[i]))
					continue;
				report_slot(slot, keys[i], 0);
				done = run_group(keys[i], Min(sor_batch_size, max_commands - ran),
								 invoker, &failed);
				report_slot(slot, NULL, done);
				if (done == 0 && !failed)
				{
					/* nothing it could run (another role's turn): let go */
					unlock_group(keys[i]);
					continue;
				}
				/*
				 * A drain's transaction may go on for long: once it ends, the
				 * workers look at the groups it held, where commands may have
				 * been enqueued meanwhile.  (A worker goes on by itself.)
				 */
				if (OidIsValid(invoker))
					sor_wake_workers_at_commit();
				ran += done;
				groups++;
				if (done > 0)
					progress = true;
			}
		}
	}

	if (ran == 0 && next_due_ms != NULL)
	{
		bool		isnull;
		Datum		due;
		Datum		now = TimestampTzGetDatum(GetCurrentTimestamp());

		*next_due_ms = -1;
		if (SPI_execute_plan(plan_next_due, &now, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the command groups");
		due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
		{
			long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															 DatumGetTimestampTz(due));

			*next_due_ms = Max(ms, 1);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	return ran;
}

/*
 * Delete the rows of up to SOR_FORGET_GROUPS groups left without commands
 * (sor.forget_empty_groups), in the current transaction.  It holds their
 * row locks until it ends, which makes a producer of such a group wait:
 * call it only in a short one.  Returns true when it may have left some.
 */
bool
sor_forget_empty_groups(void)
{
	Datum		max = Int32GetDatum(SOR_FORGET_GROUPS);
	bool		isnull;
	int32		forgotten;

	prepare_plans();
	if (SPI_execute_plan(plan_forget, &max, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not forget empty command groups");
	forgotten = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return forgotten >= SOR_FORGET_GROUPS;
}

/*
 * sor.drain_impl(max_commands integer, invoker oid) returns integer
 *
 * sor.drain(): run ready commands in the calling session and transaction,
 * under the same locks and rules as the workers, but only commands that
 * roles the caller acts for enqueued.  SECURITY DEFINER, called through
 * sor_call_with_invoker.
 */
PG_FUNCTION_INFO_V1(sor_drain_impl);
Datum
sor_drain_impl(PG_FUNCTION_ARGS)
{
	int			max_commands = PG_ARGISNULL(0) ? PG_INT32_MAX : PG_GETARG_INT32(0);
	Oid			invoker = PG_GETARG_OID(1);
	int			ran;

	if (max_commands < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_commands must not be negative")));
	if (in_handler)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sor.drain() cannot be called by a command handler")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("sor.drain() cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("It must see the commands that other consumers ran after the transaction began.")));
	if (max_commands == 0)
		PG_RETURN_INT32(0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ran = sor_run_commands(max_commands, PG_INT32_MAX, invoker, NULL, NULL);
	/* a statement of its own ends at once: its locks will not linger */
	if (!IsTransactionBlock())
		(void) sor_forget_empty_groups();
	SPI_finish();

	PG_RETURN_INT32(ran);
}
