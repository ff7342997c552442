/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  Entry point of the ddl_command_end event trigger that protects
 *	  registered tables.
 *
 * The checks themselves are PL/pgSQL (sor.check_ddl() in the install
 * script).  What SQL cannot see is which subcommands an ALTER TABLE ran, so
 * this wrapper looks at the parse tree and tells whether the command added a
 * partition (CREATE TABLE ... PARTITION OF, ALTER TABLE ... ATTACH
 * PARTITION).  Only a new partition gets sor's triggers installed; any other
 * command that leaves a trigger missing or disabled is refused.  That keeps
 * a restore from pg_dump working: it creates every trigger itself.  An
 * ALTER TABLE of one of sor's own tables also makes the shared ownership
 * cache old (shared_cache.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "nodes/parsenodes.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "sor.h"

PG_FUNCTION_INFO_V1(sor_guard_ddl);

static bool
adds_partition(Node *parsetree)
{
	ListCell   *lc;

	if (IsA(parsetree, CreateStmt))
		return ((CreateStmt *) parsetree)->partbound != NULL;
	if (!IsA(parsetree, AlterTableStmt))
		return false;
	foreach(lc, ((AlterTableStmt *) parsetree)->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

		if (cmd->subtype == AT_AttachPartition)
			return true;
	}
	return false;
}

/*
 * Whether the command is an ALTER TABLE of one of sor's own tables, such as
 * the ALTER TABLE ... ENABLE TRIGGER that ends a load of sor.owner_entry
 * with its triggers disabled (pg_restore --disable-triggers).
 */
static bool
alters_sor_table(Node *parsetree)
{
	Oid			relid;

	if (!IsA(parsetree, AlterTableStmt))
		return false;
	relid = RangeVarGetRelid(((AlterTableStmt *) parsetree)->relation,
							 NoLock, true);
	return OidIsValid(relid) &&
		get_rel_namespace(relid) == get_namespace_oid("sor", true);
}

Datum
sor_guard_ddl(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	Oid			check_ddl;
	Oid			argtypes[2] = {TEXTOID, BOOLOID};

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("sor.guard_ddl() may only be called as an event trigger")));
	trigdata = (EventTriggerData *) fcinfo->context;

	check_ddl = LookupFuncName(list_make2(makeString("sor"),
										  makeString("check_ddl")),
							   2, argtypes, false);
	OidFunctionCall2(check_ddl,
					 CStringGetTextDatum(GetCommandTagName(trigdata->tag)),
					 BoolGetDatum(adds_partition(trigdata->parsetree)));

	/*
	 * Ownership entries written while the catalog's triggers were disabled
	 * emptied no slot of the shared cache: make them all old.
	 */
	if (alters_sor_table(trigdata->parsetree))
		sor_shared_cache_forget_all();
	PG_RETURN_NULL();
}
