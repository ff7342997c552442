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
 * both the old and the new key.  TRUNCATE is always refused.
 *
 * Changes applied by a replication worker (replica role with a replication
 * origin set, as pglogical and built-in subscriptions do) go through when
 * the site they come from owns the record here; any other such change is
 * set aside in sor.conflict instead, never raised (an error would stop the
 * subscription).  The catalog triggers apply the rules for ownership
 * changes that arrive by replication: a change with a lower epoch than the
 * one here is skipped; a transfer to another site is acknowledged (by a
 * command that a worker runs, so that the acknowledgement travels in this
 * site's own stream); a transfer to this site waits for those
 * acknowledgements; a takeover displaces this site's copy of the record,
 * which the new owner then sends again.  See "Sites together" in the
 * README for the argument.
 *
 * The hot path runs no SQL: a cache probe for the table, the key's text
 * form, the record lock (lock.c) and a cache probe for the owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
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
#define ERRCODE_SOR_HANDOFF_PENDING		MAKE_SQLSTATE('S','R','0','0','5')

/* Column numbers of catalog tables, as created by the install script. */
#define Anum_domain_name				1
#define Anum_domain_default_site		3
#define Anum_domain_default_epoch		4
#define Anum_owner_entry_domain			1
#define Anum_owner_entry_key			2
#define Anum_owner_entry_site			3
#define Anum_owner_entry_epoch			4
#define Anum_owner_entry_from_site		6
#define Anum_owner_entry_awaiting_acks	7
#define Anum_history_domain				3
#define Anum_history_key				4
#define Anum_history_action				5

/*
 * Set while sor itself changes registered tables during the apply of a
 * takeover (displace_record): those deletes pass the enforcement trigger.
 */
static bool internal_change = false;

/* The site of the replication origin last seen, see origin_site(). */
static RepOriginId known_origin = InvalidRepOriginId;
static char known_origin_site[NAMEDATALEN];

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
 * The site whose change is being applied, from the replication origin of
 * this session, or NULL when no site is known for it.  The answer is
 * remembered per backend (an apply worker has one origin); an unknown
 * origin is asked again every time, since the site may be added later.
 */
static const char *
origin_site(void)
{
	char	   *origin_name;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	bool		isnull = true;
	Datum		site = (Datum) 0;

	if (replorigin_session_origin == known_origin)
		return known_origin_site;
	if (!replorigin_by_oid(replorigin_session_origin, true, &origin_name))
		return NULL;

	args[0] = CStringGetTextDatum(origin_name);
	SPI_connect();
	if (SPI_execute_with_args("SELECT sor.origin_site($1)", 1, argtypes, args,
							  NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		site = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
							 &isnull);
	if (!isnull)
	{
		text_to_cstring_buffer(DatumGetTextPP(site), known_origin_site,
							   NAMEDATALEN);
		known_origin = replorigin_session_origin;
	}
	SPI_finish();
	return isnull ? NULL : known_origin_site;
}

/*
 * Run a query of sor's own through SPI, with arguments as
 * SPI_execute_with_args takes them.
 */
static void
run_sql(const char *query, int nargs, Oid *argtypes, Datum *args,
		const char *nulls)
{
	SPI_connect();
	if (SPI_execute_with_args(query, nargs, argtypes, args, nulls, false, 0) < 0)
		elog(ERROR, "could not run \"%s\"", query);
	SPI_finish();
}

static Datum
text_or_null(const char *value, char *null)
{
	*null = value ? ' ' : 'n';
	return value ? CStringGetTextDatum(value) : (Datum) 0;
}

/*
 * Find the record that the key column of tuple names, take its write lock
 * (lock.c) and look up its owner.  Returns the table's cache entry; the
 * key comes back through *key as a Datum of the column's type (key_text()
 * gives its canonical text).
 *
 * A transaction that holds its domain's lock (a bulk write) takes no more
 * locks, and in a domain whose keys all fall to the default owner needs
 * neither the key's text nor a lookup: the fast path of COPY and
 * INSERT ... SELECT.  Nor does it for an integer or uuid key that it has
 * looked up before (sor_bulk_owner()).
 */
static SorTable *
lock_record(Relation rel, HeapTuple tuple, Datum *key, SorOwnership *owner)
{
	Oid			relid = RelationGetRelid(rel);
	SorTable   *table;
	bool		isnull;
	char	   *key_string;
	uint64		record_hash;
	uint64		generation;

	table = sor_lookup_table(relid);
	if (table == NULL)
		not_registered(rel);

	*key = heap_getattr(tuple, table->key_attnum, RelationGetDescr(rel),
						&isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("key column \"%s\" of registered table \"%s\" must not be null",
						get_attname(relid, table->key_attnum, false),
						qualified_name(rel)),
				 errdetail("Every row of a registered table belongs to the record its key names.")));

	/*
	 * A bulk write that holds its domain's lock: no hand-off of the domain
	 * can commit before it ends, so no lock calls; and for a key known to
	 * fall to the default owner, or looked up before, no text form and no
	 * lookup either.
	 */
	if (sor_domain_write_locked(table->domain->name))
	{
		if (!table->domain->has_entries ||
			sor_key_has_no_entry(table, *key))
		{
			sor_lookup_owner(table->domain, NULL, 0, true, owner);
			return table;
		}
		if (sor_bulk_owner(table, *key, owner))
			return table;
		key_string = OutputFunctionCall(&table->key_output, *key);
		sor_lookup_owner(table->domain, key_string,
						 sor_record_hash(table->domain->name, key_string), true,
						 owner);
		sor_bulk_remember_owner(table, *key, owner);
		return table;
	}

	key_string = OutputFunctionCall(&table->key_output, *key);
	record_hash = sor_record_hash(table->domain->name, key_string);

	/* Lock first, then check: a hand-off that committed meanwhile is seen. */
	generation = sor_cache_generation();
	sor_lock_record_for_write(table->domain->name, record_hash);
	sor_cache_revalidate();
	if (generation != sor_cache_generation() &&
		(table = sor_lookup_table(relid)) == NULL)
		not_registered(rel);

	sor_lookup_owner(table->domain, key_string, record_hash, true, owner);
	return table;
}

/* The canonical text of a key that lock_record() returned. */
static char *
key_text(SorTable *table, Datum key)
{
	return OutputFunctionCall(&table->key_output, key);
}

/*
 * Refuse the write unless the local site owns the record that the key
 * column of tuple names.
 */
static void
check_record(Relation rel, HeapTuple tuple)
{
	SorTable   *table;
	Datum		key;
	const char *local;
	SorOwnership owner;
	char	   *waiting;

	table = lock_record(rel, tuple, &key, &owner);

	local = sor_local_site();
	if (local == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SOR_NO_LOCAL_SITE),
				 errmsg("cannot write registered table \"%s\": the local site is not set",
						qualified_name(rel)),
				 errhint("An administrator names this site with sor.set_local_site().")));

	if (!owner.owned)
	{
		sor_count_refusal(RelationGetRelid(rel), "", "SR002");
		ereport(ERROR,
				(errcode(ERRCODE_SOR_NO_OWNER),
				 errmsg("cannot write key \"%s\" of table \"%s\" at site \"%s\": the record has no owner",
						key_text(table, key), qualified_name(rel), local),
				 errdetail("Domain \"%s\" has no ownership entry for the key and no default site.",
						   table->domain->name),
				 errhint("Claim the record for this site with sor.claim() first.")));
	}
	if (strcmp(owner.site, local) != 0)
	{
		sor_count_refusal(RelationGetRelid(rel), owner.site, "SR001");
		ereport(ERROR,
				(errcode(ERRCODE_SOR_NOT_OWNER),
				 errmsg("cannot write key \"%s\" of table \"%s\" at site \"%s\": the record is owned by site \"%s\"",
						key_text(table, key), qualified_name(rel), local, owner.site),
				 errdetail("Only the owner writes a record; other sites hold read-only copies (domain \"%s\", epoch " INT64_FORMAT ").",
						   table->domain->name, owner.epoch),
				 errhint("Send the write to site \"%s\", or have that site transfer the record with sor.transfer().",
						 owner.site)));
	}
	/*
	 * Acknowledgements only ever complete, and the record lock keeps the
	 * owner as it is: if they are all in by now, the write may go on.
	 */
	if (owner.acks_missing &&
		(waiting = sor_missing_acks(table->domain->name,
									key_text(table, key))) != NULL)
	{
		sor_count_refusal(RelationGetRelid(rel), owner.site, "SR005");
		ereport(ERROR,
				(errcode(ERRCODE_SOR_HANDOFF_PENDING),
				 errmsg("cannot write key \"%s\" of table \"%s\" at site \"%s\" yet: the hand-off is not acknowledged by site %s",
						key_text(table, key), qualified_name(rel), local,
						waiting),
				 errdetail("The record was handed to this site at epoch " INT64_FORMAT "; a site acknowledges once it has applied every change the previous owner made before.",
						   owner.epoch),
				 errhint("Retry shortly; sor.handoffs shows which sites are still to acknowledge.")));
	}
}

/*
 * Keep a replicated change that is not applied in sor.conflict.
 */
static void
set_aside(Relation rel, SorTable *table, const char *key,
		  const SorOwnership *owner, const char *origin, const char *operation,
		  HeapTuple old_tuple, HeapTuple new_tuple)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	Oid			rowtype = tupdesc->tdtypeid;
	Oid			argtypes[9] = {TEXTOID, TEXTOID, INT8OID, REGCLASSOID, TEXTOID,
							   TEXTOID, TEXTOID, rowtype, rowtype};
	Datum		args[9];
	char		nulls[10] = "         ";

	args[0] = text_or_null(origin, &nulls[0]);
	args[1] = text_or_null(owner->owned ? owner->site : NULL, &nulls[1]);
	args[2] = Int64GetDatum(owner->epoch);
	args[3] = ObjectIdGetDatum(RelationGetRelid(rel));
	args[4] = CStringGetTextDatum(table->domain->name);
	args[5] = CStringGetTextDatum(key);
	args[6] = CStringGetTextDatum(operation);
	nulls[7] = old_tuple ? ' ' : 'n';
	args[7] = old_tuple ? heap_copy_tuple_as_datum(old_tuple, tupdesc) : (Datum) 0;
	nulls[8] = new_tuple ? ' ' : 'n';
	args[8] = new_tuple ? heap_copy_tuple_as_datum(new_tuple, tupdesc) : (Datum) 0;
	run_sql("SELECT sor.set_aside($1, $2, $3, $4, $5, $6, $7,"
			" pg_catalog.to_jsonb($8), pg_catalog.to_jsonb($9))",
			9, argtypes, args, nulls);
}

/* Whether an UPDATE from old_tuple to new_tuple changes the record's key. */
static bool
key_changed(Relation rel, HeapTuple old_tuple, HeapTuple new_tuple)
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
	oldkey = heap_getattr(old_tuple, table->key_attnum, tupdesc, &oldnull);
	newkey = heap_getattr(new_tuple, table->key_attnum, tupdesc, &newnull);
	return newnull || !datumIsEqual(oldkey, newkey, att->attbyval, att->attlen);
}

/*
 * A change that replication brings: applied when the site it comes from
 * owns its record here (both records, for an UPDATE that changes the key),
 * else set aside.  Returns the tuple to apply, or NULL to skip it.
 */
static HeapTuple
apply_replicated_row(TriggerData *trigdata)
{
	Relation	rel = trigdata->tg_relation;
	TriggerEvent event = trigdata->tg_event;
	HeapTuple	old_tuple = TRIGGER_FIRED_BY_INSERT(event) ? NULL : trigdata->tg_trigtuple;
	HeapTuple	new_tuple = TRIGGER_FIRED_BY_INSERT(event) ? trigdata->tg_trigtuple :
		TRIGGER_FIRED_BY_UPDATE(event) ? trigdata->tg_newtuple : NULL;
	const char *operation = TRIGGER_FIRED_BY_INSERT(event) ? "INSERT" :
		TRIGGER_FIRED_BY_UPDATE(event) ? "UPDATE" : "DELETE";
	const char *origin = origin_site();
	HeapTuple	records[2];
	int			i;

	records[0] = old_tuple ? old_tuple : new_tuple;
	records[1] = old_tuple && new_tuple &&
		key_changed(rel, old_tuple, new_tuple) ? new_tuple : NULL;
	for (i = 0; i < 2 && records[i] != NULL; i++)
	{
		SorTable   *table;
		Datum		key;
		SorOwnership owner;

		table = lock_record(rel, records[i], &key, &owner);
		if (!owner.owned || origin == NULL || strcmp(owner.site, origin) != 0)
		{
			set_aside(rel, table, key_text(table, key), &owner, origin,
					  operation, old_tuple, new_tuple);
			return NULL;
		}
	}
	return new_tuple ? new_tuple : old_tuple;
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

	/* sor's own change (displace_record), or one that replication brings */
	if (internal_change || applying_replicated_change())
	{
		if (!TRIGGER_FIRED_FOR_ROW(event))
			return PointerGetDatum(NULL);
		if (internal_change)
			return PointerGetDatum(TRIGGER_FIRED_BY_UPDATE(event) ?
								   trigdata->tg_newtuple : trigdata->tg_trigtuple);
		sor_cache_revalidate();
		return PointerGetDatum(apply_replicated_row(trigdata));
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
	if (key_changed(rel, trigdata->tg_trigtuple, trigdata->tg_newtuple))
		check_record(rel, trigdata->tg_newtuple);
	return PointerGetDatum(trigdata->tg_newtuple);
}

/* Text column attnum of tuple, or NULL. */
static char *
text_column(HeapTuple tuple, TupleDesc tupdesc, int attnum)
{
	bool		isnull;
	Datum		value = heap_getattr(tuple, attnum, tupdesc, &isnull);

	return isnull ? NULL : TextDatumGetCString(value);
}

static int64
int64_column(HeapTuple tuple, TupleDesc tupdesc, int attnum)
{
	bool		isnull;
	Datum		value = heap_getattr(tuple, attnum, tupdesc, &isnull);

	return isnull ? 0 : DatumGetInt64(value);
}

/*
 * Set this site's copy of a record (key NULL: of every record of the domain
 * without an entry) aside, see displace_record() in the install script.
 */
static void
displace(const char *domain, const char *key, const char *previous_owner,
		 const char *new_owner, int64 epoch)
{
	Oid			argtypes[5] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID};
	Datum		args[5];
	char		nulls[6] = "     ";

	args[0] = CStringGetTextDatum(domain);
	args[1] = text_or_null(key, &nulls[1]);
	args[2] = CStringGetTextDatum(previous_owner);
	args[3] = CStringGetTextDatum(new_owner);
	args[4] = Int64GetDatum(epoch);
	internal_change = true;
	PG_TRY();
	{
		run_sql("SELECT sor.displace_record($1, $2, $3, $4, $5)",
				5, argtypes, args, nulls);
	}
	PG_FINALLY();
	{
		internal_change = false;
	}
	PG_END_TRY();
}

/* Have this site's workers acknowledge the hand-off of a record. */
static void
request_ack(const char *domain, const char *key, int64 epoch)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, INT8OID};
	Datum		args[3];

	args[0] = CStringGetTextDatum(domain);
	args[1] = CStringGetTextDatum(key);
	args[2] = Int64GetDatum(epoch);
	run_sql("SELECT sor.request_ack($1, $2, $3)", 3, argtypes, args, NULL);
}

/*
 * Whether ownership (site, epoch, by a transfer or not) comes after
 * (other_site, other_epoch, other_by_transfer): the higher epoch wins; at
 * the same epoch a takeover (or claim) wins over a transfer, which only a
 * fenced owner can have made, and of two of a kind the greater site name
 * wins, so that every site picks the same one.
 */
static bool
ownership_follows(const char *site, int64 epoch, bool by_transfer,
				  const char *other_site, int64 other_epoch,
				  bool other_by_transfer)
{
	if (epoch != other_epoch)
		return epoch > other_epoch;
	if (by_transfer != other_by_transfer)
		return !by_transfer;
	return strcmp(site, other_site) > 0;
}

/*
 * An ownership entry that replication brings (INSERT or UPDATE of
 * sor.owner_entry).  Returns the tuple to apply, or NULL to skip it.
 */
static HeapTuple
apply_owner_entry(TriggerData *trigdata)
{
	Relation	rel = trigdata->tg_relation;
	TupleDesc	tupdesc = RelationGetDescr(rel);
	bool		is_update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	HeapTuple	tuple = is_update ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	char	   *domain = text_column(tuple, tupdesc, Anum_owner_entry_domain);
	char	   *key = text_column(tuple, tupdesc, Anum_owner_entry_key);
	char	   *site = text_column(tuple, tupdesc, Anum_owner_entry_site);
	int64		epoch = int64_column(tuple, tupdesc, Anum_owner_entry_epoch);
	char	   *from_site = text_column(tuple, tupdesc, Anum_owner_entry_from_site);
	const char *local = sor_local_site();
	const char *origin = origin_site();
	const char *previous = NULL;
	int64		previous_epoch = 0;
	bool		previous_by_transfer = false;
	bool		for_local = local != NULL && strcmp(site, local) == 0;

	if (is_update)
	{
		previous = text_column(trigdata->tg_trigtuple, tupdesc, Anum_owner_entry_site);
		previous_epoch = int64_column(trigdata->tg_trigtuple, tupdesc,
									  Anum_owner_entry_epoch);
		previous_by_transfer = text_column(trigdata->tg_trigtuple, tupdesc,
										   Anum_owner_entry_from_site) != NULL;
	}
	else
	{
		SorDomain  *d = sor_lookup_domain(domain, true);

		if (d != NULL && d->has_default)
		{
			previous = pstrdup(d->default_site);
			previous_epoch = d->default_epoch;
		}
	}

	/*
	 * A transfer to another site: acknowledge it, even when it is older
	 * than what is here.  Stream order means that every change its old
	 * owner made before it has been applied here.
	 */
	if (from_site != NULL && !for_local && local != NULL)
		request_ack(domain, key, epoch);

	/* not newer than what is here: keep ours */
	if (previous != NULL &&
		!ownership_follows(site, epoch, from_site != NULL,
						   previous, previous_epoch, previous_by_transfer))
		return NULL;

	/* a transfer to this site: writes wait for the acknowledgements */
	if (from_site != NULL && for_local)
	{
		int			attnum = Anum_owner_entry_awaiting_acks;
		Datum		value = BoolGetDatum(true);
		bool		isnull = false;

		tuple = heap_modify_tuple_by_cols(tuple, tupdesc, 1, &attnum, &value,
										  &isnull);
	}

	/*
	 * Taken from its owner by another site (a takeover, or the loser of two
	 * claims): the copy here may hold changes the new owner never saw.
	 */
	if (previous != NULL && origin != NULL && strcmp(origin, previous) != 0 &&
		strcmp(site, previous) != 0)
		displace(domain, key, previous, site, epoch);

	return tuple;
}

/*
 * A domain row that replication brings: a change of the default owner with
 * a lower epoch than the one here is skipped; one made by another site than
 * the old default owner (takeover_site) displaces this site's copies of the
 * records that have no entry of their own.
 */
static HeapTuple
apply_domain(TriggerData *trigdata)
{
	TupleDesc	tupdesc = RelationGetDescr(trigdata->tg_relation);
	HeapTuple	old_tuple = trigdata->tg_trigtuple;
	HeapTuple	new_tuple = trigdata->tg_newtuple;
	char	   *previous = text_column(old_tuple, tupdesc, Anum_domain_default_site);
	char	   *site = text_column(new_tuple, tupdesc, Anum_domain_default_site);
	int64		previous_epoch = int64_column(old_tuple, tupdesc, Anum_domain_default_epoch);
	int64		epoch = int64_column(new_tuple, tupdesc, Anum_domain_default_epoch);
	const char *origin = origin_site();

	if (epoch < previous_epoch)
		return NULL;
	if (epoch > previous_epoch && previous != NULL && site != NULL &&
		strcmp(site, previous) != 0 && origin != NULL &&
		strcmp(origin, previous) != 0)
		displace(text_column(new_tuple, tupdesc, Anum_domain_name), NULL,
				 previous, site, epoch);
	return new_tuple;
}

/*
 * A history row that replication brings: the end of a takeover made at
 * another site, whose rows have arrived by now.
 */
static void
apply_history(TriggerData *trigdata)
{
	TupleDesc	tupdesc = RelationGetDescr(trigdata->tg_relation);
	HeapTuple	tuple = trigdata->tg_trigtuple;
	char	   *action = text_column(tuple, tupdesc, Anum_history_action);
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	char		nulls[3] = "  ";
	char	   *key = text_column(tuple, tupdesc, Anum_history_key);

	if (action == NULL || strcmp(action, "takeover") != 0)
		return;
	args[0] = CStringGetTextDatum(text_column(tuple, tupdesc, Anum_history_domain));
	args[1] = text_or_null(key, &nulls[1]);
	run_sql("SELECT sor.prune_displaced($1, $2)", 2, argtypes, args, nulls);
}

/*
 * Row trigger on the sor catalog tables (and TRUNCATE trigger): sends the
 * relcache invalidation that makes every backend drop its sor caches at
 * commit, also for changes applied by replication.  On sor.owner_entry it
 * first takes the hand-off lock of the record, so that the change waits
 * for every open transaction that has written the record, and empties the
 * record's slot of the shared cache (TRUNCATE: every slot); on sor.domain a
 * change of the default owner locks the whole domain.  Changes that arrive
 * by replication then go through the rules above.
 */
Datum
sor_catalog_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	tupdesc;
	const char *kind;
	HeapTuple	tuples[2];
	HeapTuple	result;
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("sor.catalog_changed() may only be called as a trigger")));

	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);
	CacheInvalidateRelcache(rel);

	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
	{
		/* TRUNCATE fires no row triggers */
		sor_shared_cache_forget_all();
		return PointerGetDatum(NULL);
	}

	tuples[0] = trigdata->tg_trigtuple;
	tuples[1] = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : NULL;
	kind = trigdata->tg_trigger->tgnargs > 0 ?
		trigdata->tg_trigger->tgargs[0] : "";

	for (i = 0; i < 2 && tuples[i] != NULL; i++)
	{
		if (strcmp(kind, "owner_entry") == 0)
		{
			char	   *domain = text_column(tuples[i], tupdesc, Anum_owner_entry_domain);
			char	   *key = text_column(tuples[i], tupdesc, Anum_owner_entry_key);

			sor_lock_record_for_handoff(domain, key);
			sor_shared_cache_forget(domain, key);
		}
		else if (strcmp(kind, "domain") == 0)
			sor_lock_domain_for_handoff(text_column(tuples[i], tupdesc, Anum_domain_name));
	}

	result = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	if (!applying_replicated_change() ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		return PointerGetDatum(result);

	sor_cache_revalidate();
	if (strcmp(kind, "owner_entry") == 0)
		result = apply_owner_entry(trigdata);
	else if (strcmp(kind, "domain") == 0 &&
			 TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		result = apply_domain(trigdata);
	else if (strcmp(kind, "ownership_history") == 0)
		apply_history(trigdata);
	return PointerGetDatum(result);
}
