/*-------------------------------------------------------------------------
 *
 * noop_trigger.c
 *	  A C row trigger that does nothing: the benchmark's floor for any
 *	  row-trigger design (bench/sql/enforce.sql, variant "noop").
 *
 * sor's enforcement is a BEFORE ROW trigger, as the design requires.  What
 * PostgreSQL itself spends on such a trigger, before the trigger function
 * does any work, bounds what sor can reach: for UPDATE the executor locks
 * the old row for the trigger, and a BEFORE ROW INSERT trigger makes COPY
 * insert row by row instead of in batches.  This function returns the row
 * unchanged, so the difference between it and an unregistered table is
 * that cost alone.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "fmgr.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(noop_trigger);

Datum
noop_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("noop_trigger() may only be called as a trigger")));
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		return PointerGetDatum(trigdata->tg_newtuple);
	return PointerGetDatum(trigdata->tg_trigtuple);
}
