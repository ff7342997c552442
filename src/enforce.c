/*-------------------------------------------------------------------------
 *
 * enforce.c
 *	  The enforcement trigger on registered tables, and the triggers on the
 *	  sor catalog that keep the caches and the hand-off locks right.
 *
 * sor.enforce() is a BEFORE ROW trigger for INSERT, UPDATE and DELETE and a
 * BEFORE TRUNCATE statement trigger on every registered table, enabled
 * ALWAYS so that it also fires with session_replication_role = replica.  A
 * row goes through only when the local site owns its record: for UPDATE
 * both the old and the new key.  TRUNCATE is always refused.  Changes
 * applied by a replication worker (replica role with a replication origin
 * set, as pglogical and built-in subscriptions do) go through: that is how
 * copies arrive.
 *
 * The hot path runs no SQL: a cache probe for the table, the key's text
 * form, the record lock (lock.c) and a cache probe for the owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "sor.h"

/* SQLSTATEs of refused writes, class SR ("system of record"). */
#define ERRCODE_SOR_NOT_OWNER			MAKE_SQLSTATE('S','R','0','0','1')
#define ERRCODE_SOR_NO_OWNER			MAKE_SQLSTATE('S','R','0','0','2')
#define ERRCODE_SOR_NO_LOCAL_SITE		MAKE_SQLSTATE('S','R','0','0','3')
#define ERRCODE_SOR_TRUNCATE			MAKE_SQLSTATE('S','R','0','0','4')

PG_FUNCTION_INFO_V1(sor_enforce);
PG_FUNCTION_INFO_V1(sor_catalog_changed);

/* "schema.table", for messages (which quote it) */
static char *
qualified_name(Relation rel)
{
	return psprintf("%s.%s", get_namespace_name(RelationGetNamespace(rel)),
					RelationGetRelationName(rel));
}

static void
not_registered(Relation rel)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("table \"%s\" is not registered with sor",
					qualified_name(rel)),
			 errhint("Register it with sor.register_table(), or drop the trigger that calls sor.enforce().")));
}

/* True when the current change is being applied by a replication worker. */
static bool
applying_replicated_change(void)
{
	return SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA &&
		replorigin_session_origin != InvalidRepOriginId;
}

/*
 * Refuse the write unless the local site owns the record that the key
 * column of tuple names.
 */
static void
check_record(Relation rel, HeapTuple tuple)
{
	Oid			relid = RelationGetRelid(rel);
	SorTable   *table;
	Datum		value;
	bool		isnull;
	char	   *key;
	uint64		record_hash;
	uint64		generation;
	const char *local;
	SorOwnership owner;

	table = sor_lookup_table(relid);
	if (table == NULL)
		not_registered(rel);

	value = heap_getattr(tuple, table->key_attnum, RelationGetDescr(rel),
						 &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("key column \"%s\" of registered table \"%s\" must not be null",
						get_attname(relid, table->key_attnum, false),
						qualified_name(rel)),
				 errdetail("Every row of a registered table belongs to the record its key names.")));
	key = OutputFunctionCall(&table->key_output, value);
	record_hash = sor_record_hash(table->domain->name, key);

	/* Lock first, then check: a hand-off that committed meanwhile is seen. */
	generation = sor_cache_generation();
	sor_lock_record_for_write(table->domain->name, record_hash);
	sor_cache_revalidate();
	if (generation != sor_cache_generation() &&
		(table = sor_lookup_table(relid)) == NULL)
		not_registered(rel);

	local = sor_local_site();
	if (local == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SOR_NO_LOCAL_SITE),
				 errmsg("cannot write registered table \"%s\": the local site is not set",
						qualified_name(rel)),
				 errhint("An administrator names this site with sor.set_local_site().")));

	sor_lookup_owner(table->domain, key, record_hash, &owner);
	if (!owner.owned)
		ereport(ERROR,
				(errcode(ERRCODE_SOR_NO_OWNER),
				 errmsg("cannot write key \"%s\" of table \"%s\" at site \"%s\": the record has no owner",
						key, qualified_name(rel), local),
				 errdetail("Domain \"%s\" has no ownership entry for the key and no default site.",
						   table->domain->name),
				 errhint("Claim the record for this site with sor.claim() first.")));
	if (strcmp(owner.site, local) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_SOR_NOT_OWNER),
				 errmsg("cannot write key \"%s\" of table \"%s\" at site \"%s\": the record is owned by site \"%s\"",
						key, qualified_name(rel), local, owner.site),
				 errdetail("Only the owner writes a record; other sites hold read-only copies (domain \"%s\", epoch " INT64_FORMAT ").",
						   table->domain->name, owner.epoch),
				 errhint("Send the write to site \"%s\", or have that site transfer the record with sor.transfer().",
						 owner.site)));
}

/*
 * The enforcement trigger.
 */
Datum
sor_enforce(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TriggerEvent event;
	Relation	rel;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("sor.enforce() may only be called as a trigger")));

	event = trigdata->tg_event;
	rel = trigdata->tg_relation;

	/* a change that the owner made and replication brings here */
	if (applying_replicated_change())
	{
		if (!TRIGGER_FIRED_FOR_ROW(event))
			return PointerGetDatum(NULL);
		return PointerGetDatum(TRIGGER_FIRED_BY_UPDATE(event) ?
							   trigdata->tg_newtuple : trigdata->tg_trigtuple);
	}

	if (TRIGGER_FIRED_BY_TRUNCATE(event))
	{
		/* left behind on a partition that was detached: nothing to guard */
		sor_cache_revalidate();
		if (sor_lookup_table(RelationGetRelid(rel)) == NULL)
			return PointerGetDatum(NULL);
		ereport(ERROR,
				(errcode(ERRCODE_SOR_TRUNCATE),
				 errmsg("cannot truncate registered table \"%s\"",
						qualified_name(rel)),
				 errdetail("TRUNCATE would reach every site and empty their copies, records owned by other sites included."),
				 errhint("Delete the rows this site owns with DELETE, or unregister the table with sor.unregister_table() first.")));
	}

	if (!TRIGGER_FIRED_BEFORE(event) || !TRIGGER_FIRED_FOR_ROW(event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("sor.enforce() must be fired BEFORE ROW or BEFORE TRUNCATE")));

	sor_cache_revalidate();

	if (TRIGGER_FIRED_BY_INSERT(event))
	{
		check_record(rel, trigdata->tg_trigtuple);
		return PointerGetDatum(trigdata->tg_trigtuple);
	}
	if (TRIGGER_FIRED_BY_DELETE(event))
	{
		check_record(rel, trigdata->tg_trigtuple);
		return PointerGetDatum(trigdata->tg_trigtuple);
	}

	/* UPDATE: the old record, and the new one if the key changes */
	check_record(rel, trigdata->tg_trigtuple);
	{
		SorTable   *table = sor_lookup_table(RelationGetRelid(rel));
		TupleDesc	tupdesc = RelationGetDescr(rel);
		Form_pg_attribute att;
		bool		oldnull;
		bool		newnull;
		Datum		oldkey;
		Datum		newkey;

		if (table == NULL)
			not_registered(rel);
		att = TupleDescAttr(tupdesc, table->key_attnum - 1);
		oldkey = heap_getattr(trigdata->tg_trigtuple, table->key_attnum,
							  tupdesc, &oldnull);
		newkey = heap_getattr(trigdata->tg_newtuple, table->key_attnum,
							  tupdesc, &newnull);
		if (newnull || !datumIsEqual(oldkey, newkey, att->attbyval, att->attlen))
			check_record(rel, trigdata->tg_newtuple);
	}
	return PointerGetDatum(trigdata->tg_newtuple);
}

/*
 * Row trigger on the sor catalog tables (and TRUNCATE trigger): sends the
 * relcache invalidation that makes every backend drop its sor caches at
 * commit, also for changes applied by replication.  On sor.owner_entry it
 * first takes the hand-off lock of the record, so that the change waits
 * for every open transaction that has written the record; on sor.domain a
 * change of the default owner locks the whole domain.
 */
Datum
sor_catalog_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	const char *kind;
	HeapTuple	tuples[2];
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("sor.catalog_changed() may only be called as a trigger")));

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	CacheInvalidateRelcache(rel);

	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		return PointerGetDatum(NULL);

	tuples[0] = trigdata->tg_trigtuple;
	tuples[1] = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : NULL;
	kind = trigdata->tg_trigger->tgnargs > 0 ?
		trigdata->tg_trigger->tgargs[0] : "";

	for (i = 0; i < 2 && tuples[i] != NULL; i++)
	{
		bool		isnull;
		char	   *domain;

		if (strcmp(kind, "owner_entry") == 0)
		{
			domain = TextDatumGetCString(heap_getattr(tuples[i], 1, tupdesc, &isnull));
			sor_lock_record_for_handoff(domain,
										TextDatumGetCString(heap_getattr(tuples[i], 2,
																		 tupdesc, &isnull)));
		}
		else if (strcmp(kind, "domain") == 0)
		{
			domain = TextDatumGetCString(heap_getattr(tuples[i], 1, tupdesc, &isnull));
			sor_lock_domain_for_handoff(domain);
		}
	}

	return PointerGetDatum(TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
						   trigdata->tg_newtuple : trigdata->tg_trigtuple);
}
