/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  Backend-local caches of the sor catalog.
 *
 * The enforcement trigger runs on every write to a registered table, so it
 * must not run SQL.  It reads the catalog through the caches here: the local
 * site, domains by name, registered tables (and their partitions) by OID,
 * and ownership by (domain, key).  Entries are loaded on first use with
 * index scans under the latest snapshot, so a lookup always sees the latest
 * committed catalog plus the current transaction's own changes.
 *
 * Plain DML on a table sends no invalidation, so every sor catalog table has
 * a row trigger (enforce.c) that sends a relcache invalidation for itself;
 * a relcache callback marks the caches stale, and the next call of
 * sor_cache_revalidate() drops them.  The triggers are enabled ALWAYS, so
 * changes that arrive by replication invalidate too.  Caches are dropped
 * only in sor_cache_revalidate(), never in the middle of a lookup, so a
 * pointer returned by a lookup stays valid until the caller revalidates.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"
#if PG_VERSION_NUM >= 160000
#include "varatt.h"
#endif

#include "sor.h"

/* Column numbers of the catalog tables, as created by the install script. */
#define Anum_local_identity_site		2
#define Anum_domain_name				1
#define Anum_domain_key_type			2
#define Anum_domain_default_site		3
#define Anum_domain_default_epoch		4
#define Anum_registered_table_tbl		1
#define Anum_registered_table_domain	2
#define Anum_registered_table_key		3
#define Anum_owner_entry_domain			1
#define Anum_owner_entry_key			2
#define Anum_owner_entry_site			3
#define Anum_owner_entry_epoch			4
#define Anum_owner_entry_awaiting_acks	7
#define Natts_owner_entry				7

/*
 * Upper bound of cached ownership entries (about 150 bytes each); past it
 * the cache starts over.
 */
#define SOR_OWNER_CACHE_MAX			262144

/*
 * A domain with at most this many ownership entries is read whole into the
 * ownership cache at its first miss, so that keys without an entry of their
 * own (those of the default owner) need no index probe each.  Small enough
 * that reading it again after every invalidation costs about a millisecond.
 */
#define SOR_DOMAIN_PRELOAD_MAX		1024

/* OIDs of the catalog tables the caches read; valid while catalog_known. */
typedef struct SorCatalog
{
	Oid			local_identity;
	Oid			domain;
	Oid			domain_pkey;
	Oid			registered_table;
	Oid			registered_table_pkey;
	Oid			owner_entry;
	Oid			owner_entry_pkey;
	Oid			owner_entry_key_hash;	/* hash index on key alone */
	Oid			handoff_ack;
	Oid			site;
	Oid			write_fence;
} SorCatalog;

typedef struct OwnerCacheEntry
{
	uint64		hash;			/* hash key: hash of "domain\0key" */
	char	   *domain_key;		/* "domain\0key", to tell collisions apart */
	Size		len;
	SorOwnership ownership;
} OwnerCacheEntry;

static bool catalog_known = false;
static SorCatalog catalog;

static MemoryContext cache_context = NULL;
static MemoryContext owner_context = NULL;	/* child: owner_cache, its keys */
static MemoryContext table_context = NULL;	/* child: table_cache */
static HTAB *domain_cache = NULL;
static HTAB *table_cache = NULL;
static HTAB *owner_cache = NULL;

static bool local_site_known = false;
static bool local_site_set = false;
static char local_site_name[NAMEDATALEN];

/* The entry sor_lookup_table() returned last, while cache_generation is. */
static SorTable *last_table = NULL;
static uint64 last_table_generation = 0;

static bool cache_stale = false;
static bool tables_stale = false;	/* only table_cache */

static void create_table_cache(void);
static uint64 cache_generation = 0;

/*
 * Invalidation of a sor catalog table: drop it all at the next
 * revalidation.  Invalidation of a cached registered table (its key column
 * may have changed type, a partition may have moved): drop the table cache
 * only, since ANALYZE and VACUUM send these often and ownership does not
 * depend on them.
 */
static void
relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || sor_is_catalog_relation(relid))
		cache_stale = true;
	else if (table_cache != NULL &&
			 hash_search(table_cache, &relid, HASH_FIND, NULL) != NULL)
		tables_stale = true;
}

/* Called once per backend from _PG_init. */
void
sor_cache_init(void)
{
	CacheRegisterRelcacheCallback(relcache_callback, (Datum) 0);
}

bool
sor_is_catalog_relation(Oid relid)
{
	return catalog_known &&
		(relid == catalog.local_identity ||
		 relid == catalog.domain ||
		 relid == catalog.registered_table ||
		 relid == catalog.owner_entry ||
		 relid == catalog.handoff_ack ||
		 relid == catalog.site);
}

/*
 * Drop every cache if an invalidation arrived since the last call.  Callers
 * must look up again whatever they hold from before.
 */
void
sor_cache_revalidate(void)
{
	if (!cache_stale && !tables_stale)
		return;
	if (!cache_stale)
	{
		tables_stale = false;
		cache_generation++;
		MemoryContextReset(table_context);
		create_table_cache();
		return;
	}
	cache_stale = false;
	tables_stale = false;
	cache_generation++;
	catalog_known = false;
	local_site_known = false;
	domain_cache = NULL;
	table_cache = NULL;
	owner_cache = NULL;
	if (cache_context)
		MemoryContextReset(cache_context);
}

uint64
sor_cache_generation(void)
{
	return cache_generation;
}

static Oid
catalog_relid(Oid nspid, const char *relname)
{
	Oid			relid = get_relname_relid(relname, nspid);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sor catalog table \"sor.%s\" is missing", relname)));
	return relid;
}

static Oid
primary_key_of(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
#if PG_VERSION_NUM >= 180000
	Oid			indexid = RelationGetPrimaryKeyIndex(rel, false);
#else
	Oid			indexid = RelationGetPrimaryKeyIndex(rel);
#endif

	table_close(rel, AccessShareLock);
	return indexid;
}

static void
create_table_cache(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(SorTable);
	ctl.hcxt = table_context;
	table_cache = hash_create("sor tables", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static void
create_owner_cache(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(OwnerCacheEntry);
	ctl.hcxt = owner_context;
	owner_cache = hash_create("sor ownership", 1024, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static void
load_catalog(void)
{
	Oid			nspid;
	HASHCTL		ctl;

	if (catalog_known)
		return;

	nspid = get_namespace_oid("sor", true);
	if (!OidIsValid(nspid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"sor\" is not installed in this database")));

	catalog.local_identity = catalog_relid(nspid, "local_identity");
	catalog.domain = catalog_relid(nspid, "domain");
	catalog.registered_table = catalog_relid(nspid, "registered_table");
	catalog.owner_entry = catalog_relid(nspid, "owner_entry");
	catalog.handoff_ack = catalog_relid(nspid, "handoff_ack");
	catalog.site = catalog_relid(nspid, "site");
	catalog.write_fence = catalog_relid(nspid, "write_fence");
	catalog.domain_pkey = primary_key_of(catalog.domain);
	catalog.registered_table_pkey = primary_key_of(catalog.registered_table);
	catalog.owner_entry_pkey = primary_key_of(catalog.owner_entry);
	catalog.owner_entry_key_hash = catalog_relid(nspid, "owner_entry_key_hash");

	if (cache_context == NULL)
		cache_context = AllocSetContextCreate(CacheMemoryContext,
											  "sor catalog cache",
											  ALLOCSET_DEFAULT_SIZES);

	ctl.keysize = sizeof(((SorDomain *) NULL)->name);
	ctl.entrysize = sizeof(SorDomain);
	ctl.hcxt = cache_context;
	domain_cache = hash_create("sor domains", 16, &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	table_context = AllocSetContextCreate(cache_context, "sor table cache",
										  ALLOCSET_SMALL_SIZES);
	create_table_cache();

	owner_context = AllocSetContextCreate(cache_context, "sor ownership cache",
										  ALLOCSET_DEFAULT_SIZES);
	create_owner_cache();

	catalog_known = true;
}

/* The relation that writers lock weakly, see lock.c. */
Oid
sor_write_fence(void)
{
	load_catalog();
	return catalog.write_fence;
}

/*
 * Find the one row of a catalog table that matches the scan keys, under the
 * latest snapshot.  Returns a copy, or NULL.  The tuple descriptor is
 * returned through *tupdesc and stays valid while the relation is open, so
 * the relation is returned open too; close it with table_close.
 */
static HeapTuple
fetch_catalog_row(Oid relid, Oid indexid, int nkeys, ScanKey keys,
				  Relation *relp)
{
	Relation	rel;
	Snapshot	snapshot;
	SysScanDesc scan;
	HeapTuple	tuple;

	rel = table_open(relid, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, indexid, OidIsValid(indexid), snapshot,
							  nkeys, keys);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		tuple = heap_copytuple(tuple);
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);

	*relp = rel;
	return tuple;
}

/* The local site's name, or NULL while it is not set. */
const char *
sor_local_site(void)
{
	if (!local_site_known)
	{
		Relation	rel;
		HeapTuple	tuple;

		load_catalog();
		tuple = fetch_catalog_row(catalog.local_identity, InvalidOid, 0, NULL,
								  &rel);
		local_site_set = false;
		if (HeapTupleIsValid(tuple))
		{
			bool		isnull;
			Datum		site = heap_getattr(tuple, Anum_local_identity_site,
											RelationGetDescr(rel), &isnull);

			if (!isnull)
			{
				text_to_cstring_buffer(DatumGetTextPP(site), local_site_name,
									   NAMEDATALEN);
				local_site_set = true;
			}
		}
		table_close(rel, AccessShareLock);
		local_site_known = true;
	}
	return local_site_set ? local_site_name : NULL;
}

/*
 * The base type whose canonical text names a key: one type per family, so
 * that int4 and int8 key columns can share a domain.  InvalidOid when the
 * type cannot be a key (its text form is not canonical, e.g. numeric's
 * "1.0" and "1.00", or it has none that is stable).
 */
Oid
sor_key_family_type(Oid typid)
{
	switch (getBaseType(typid))
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
			return INT8OID;
		case TEXTOID:
		case VARCHAROID:
			return TEXTOID;
		case UUIDOID:
			return UUIDOID;
		default:
			return InvalidOid;
	}
}

SorDomain *
sor_lookup_domain(const char *name, bool missing_ok)
{
	SorDomain  *domain;
	SorDomain	loaded;
	char		hashkey[sizeof(((SorDomain *) NULL)->name)];
	bool		found;
	ScanKeyData key;
	Relation	rel;
	HeapTuple	tuple;
	TupleDesc	tupdesc;
	Datum		datum;
	bool		isnull;
	bool		isvarlena;
	Oid			func;

	load_catalog();

	if (strlen(name) >= sizeof(hashkey))
	{
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("domain \"%s\" does not exist", name)));
	}
	memset(hashkey, 0, sizeof(hashkey));
	strlcpy(hashkey, name, sizeof(hashkey));

	domain = hash_search(domain_cache, hashkey, HASH_FIND, NULL);
	if (domain)
		return domain;

	ScanKeyInit(&key, Anum_domain_name, BTEqualStrategyNumber, F_TEXTEQ,
				CStringGetTextDatum(name));
	tuple = fetch_catalog_row(catalog.domain, catalog.domain_pkey, 1, &key,
							  &rel);
	if (!HeapTupleIsValid(tuple))
	{
		table_close(rel, AccessShareLock);
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("domain \"%s\" does not exist", name),
				 errhint("A domain is created by the first sor.register_table() that names it.")));
	}

	memset(&loaded, 0, sizeof(loaded));
	strlcpy(loaded.name, name, sizeof(loaded.name));
	loaded.shared_cache_name = -1;
	tupdesc = RelationGetDescr(rel);

	datum = heap_getattr(tuple, Anum_domain_key_type, tupdesc, &isnull);
	loaded.key_type = DatumGetObjectId(datum);
	getTypeInputInfo(loaded.key_type, &func, &loaded.key_ioparam);
	fmgr_info_cxt(func, &loaded.key_input, cache_context);
	getTypeOutputInfo(loaded.key_type, &func, &isvarlena);
	fmgr_info_cxt(func, &loaded.key_output, cache_context);

	datum = heap_getattr(tuple, Anum_domain_default_site, tupdesc, &isnull);
	loaded.has_default = !isnull;
	if (!isnull)
		text_to_cstring_buffer(DatumGetTextPP(datum), loaded.default_site,
							   NAMEDATALEN);
	datum = heap_getattr(tuple, Anum_domain_default_epoch, tupdesc, &isnull);
	loaded.default_epoch = isnull ? 0 : DatumGetInt64(datum);

	table_close(rel, AccessShareLock);

	/* whether any key has an entry of its own (else all fall to the default) */
	ScanKeyInit(&key, Anum_owner_entry_domain, BTEqualStrategyNumber, F_TEXTEQ,
				CStringGetTextDatum(name));
	tuple = fetch_catalog_row(catalog.owner_entry, catalog.owner_entry_pkey,
							  1, &key, &rel);
	loaded.has_entries = HeapTupleIsValid(tuple);
	table_close(rel, AccessShareLock);

	/* nothing can fail from here on: no half-built entry is left behind */
	domain = hash_search(domain_cache, hashkey, HASH_ENTER, &found);
	*domain = loaded;
	return domain;
}

/* The registration row of relid itself, or NULL. */
static HeapTuple
fetch_registration(Oid relid, Relation *relp)
{
	ScanKeyData key;

	ScanKeyInit(&key, Anum_registered_table_tbl, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	return fetch_catalog_row(catalog.registered_table,
							 catalog.registered_table_pkey, 1, &key, relp);
}

/*
 * The cached facts about relid, which is a registered table or a partition
 * of one; NULL if it is neither.
 */
SorTable *
sor_lookup_table(Oid relid)
{
	SorTable   *table;
	SorDomain  *domain;
	FmgrInfo	key_output;
	Relation	rel;
	HeapTuple	tuple;
	char	   *domain_name;
	char	   *key_column;
	AttrNumber	attnum;
	Oid			atttype;
	Oid			func;
	bool		isvarlena;
	bool		isnull;

	/* a statement writes one table row after row: it was the last asked */
	if (last_table != NULL && last_table_generation == cache_generation &&
		last_table->relid == relid)
		return last_table;

	load_catalog();

	table = hash_search(table_cache, &relid, HASH_FIND, NULL);
	if (table)
	{
		last_table = table;
		last_table_generation = cache_generation;
		return table;
	}

	tuple = fetch_registration(relid, &rel);
	if (!HeapTupleIsValid(tuple) && get_rel_relispartition(relid))
	{
		List	   *ancestors = get_partition_ancestors(relid);
		ListCell   *lc;

		foreach(lc, ancestors)
		{
			table_close(rel, AccessShareLock);
			tuple = fetch_registration(lfirst_oid(lc), &rel);
			if (HeapTupleIsValid(tuple))
				break;
		}
		list_free(ancestors);
	}
	if (!HeapTupleIsValid(tuple))
	{
		table_close(rel, AccessShareLock);
		return NULL;
	}

	domain_name = TextDatumGetCString(heap_getattr(tuple,
												   Anum_registered_table_domain,
												   RelationGetDescr(rel),
												   &isnull));
	key_column = pstrdup(NameStr(*DatumGetName(heap_getattr(tuple,
															Anum_registered_table_key,
															RelationGetDescr(rel),
															&isnull))));
	table_close(rel, AccessShareLock);

	attnum = get_attnum(relid, key_column);
	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("key column \"%s\" of registered table \"%s\" does not exist",
						key_column, get_rel_name(relid))));
	atttype = get_atttype(relid, attnum);

	domain = sor_lookup_domain(domain_name, false);
	getTypeOutputInfo(atttype, &func, &isvarlena);
	fmgr_info_cxt(func, &key_output, table_context);

	/* nothing can fail from here on: no half-built entry is left behind */
	table = hash_search(table_cache, &relid, HASH_ENTER, NULL);
	table->domain = domain;
	table->key_attnum = attnum;
	table->key_base_type = getBaseType(atttype);
	table->key_output = key_output;
	last_table = table;
	last_table_generation = cache_generation;
	return table;
}

/*
 * The sites that have yet to acknowledge the hand-off of (domain, key) to
 * this site, quoted and comma-separated, or NULL.  Rare (only entries that
 * arrived by a transfer ask), so SQL, run under the latest snapshot like
 * every other lookup here: the transaction's own snapshot may be older
 * than the entry that asks.
 */
char *
sor_missing_acks(const char *domain, const char *key)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	Datum		sites;
	bool		isnull = true;
	char	   *result = NULL;
	MemoryContext caller = CurrentMemoryContext;

	args[0] = CStringGetTextDatum(domain);
	args[1] = CStringGetTextDatum(key);
	SPI_connect();
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute_with_args("SELECT sor.missing_acks($1, $2)",
							  2, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the acknowledgements of a hand-off");
	PopActiveSnapshot();
	if (SPI_processed == 1)
	{
		sites = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
							  &isnull);
		if (!isnull)
			result = MemoryContextStrdup(caller, TextDatumGetCString(sites));
	}
	SPI_finish();
	return result;
}

/* The columns of an owner_entry row, into values and nulls. */
static void
deform_owner_entry(HeapTuple tuple, TupleDesc tupdesc, Datum *values,
				   bool *nulls)
{
	if (tupdesc->natts != Natts_owner_entry)
		elog(ERROR, "sor.owner_entry has %d columns instead of %d",
			 tupdesc->natts, Natts_owner_entry);
	heap_deform_tuple(tuple, tupdesc, values, nulls);
}

/* The ownership that an owner_entry row (its columns) gives, in result. */
static void
ownership_of_entry(SorDomain *domain, const char *key, const Datum *values,
				   SorOwnership *result)
{
	memset(result, 0, sizeof(SorOwnership));
	result->owned = true;
	text_to_cstring_buffer(DatumGetTextPP(values[Anum_owner_entry_site - 1]),
						   result->site, NAMEDATALEN);
	result->epoch = DatumGetInt64(values[Anum_owner_entry_epoch - 1]);
	result->acks_missing =
		DatumGetBool(values[Anum_owner_entry_awaiting_acks - 1]) &&
		sor_missing_acks(domain->name, key) != NULL;
}

/* The ownership of a key of domain that has no entry of its own. */
static void
default_ownership(SorDomain *domain, SorOwnership *result)
{
	memset(result, 0, sizeof(SorOwnership));
	result->owned = domain->has_default;
	if (domain->has_default)
	{
		strlcpy(result->site, domain->default_site, NAMEDATALEN);
		result->epoch = domain->default_epoch;
	}
}

/* domain's entries are not all cached (any more), nor their digests. */
static void
entries_not_cached(SorDomain *domain)
{
	domain->entries_cached = SOR_ENTRIES_NOT_YET;
	if (domain->entry_digests != NULL)
		pfree(domain->entry_digests);
	domain->entry_digests = NULL;
	domain->n_entry_digests = 0;
}

/*
 * The ownership cache is about to lose entries of a domain (domain_name
 * NULL: of every domain): it no longer holds them all, and a preload in
 * progress must not claim it does.  Tried again at the next miss.
 */
static void
forget_entries_cached(const char *domain_name)
{
	HASH_SEQ_STATUS status;
	SorDomain  *domain;

	if (domain_name != NULL)
	{
		char		hashkey[sizeof(((SorDomain *) NULL)->name)];

		memset(hashkey, 0, sizeof(hashkey));
		strlcpy(hashkey, domain_name, sizeof(hashkey));
		domain = hash_search(domain_cache, hashkey, HASH_FIND, NULL);
		if (domain != NULL)
			entries_not_cached(domain);
		return;
	}
	hash_seq_init(&status, domain_cache);
	while ((domain = hash_seq_search(&status)) != NULL)
		entries_not_cached(domain);
}

/*
 * A digest of a key's value, made without its text form: keys with the
 * same canonical text have the same digest.  An integer's is its value; a
 * text's or a uuid's is a hash of its bytes, which its canonical text
 * spells out one for one.  false for a type outside the key families (see
 * sor_key_family_type()).
 */
static bool
key_digest(Oid base_type, Datum value, uint64 *digest)
{
	switch (base_type)
	{
		case INT2OID:
			*digest = (uint64) (int64) DatumGetInt16(value);
			return true;
		case INT4OID:
			*digest = (uint64) (int64) DatumGetInt32(value);
			return true;
		case INT8OID:
			*digest = (uint64) DatumGetInt64(value);
			return true;
		case TEXTOID:
		case VARCHAROID:
			{
				text	   *t = DatumGetTextPP(value);

				*digest = hash_bytes_extended((unsigned char *) VARDATA_ANY(t),
											  VARSIZE_ANY_EXHDR(t), 0);
				return true;
			}
		case UUIDOID:
			*digest = hash_bytes_extended(DatumGetUUIDP(value)->data,
										  UUID_LEN, 0);
			return true;
		default:
			return false;
	}
}

static int
digest_cmp(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return (x > y) - (x < y);
}

/*
 * Whether key, a value of table's key column, surely has no ownership
 * entry, told without its text form: every entry of its domain is cached,
 * and none has the key's digest.  false if not known.  For bulk writes,
 * which need neither the text nor the hash for a lock (sor_lookup_owner()
 * then takes a NULL key).
 */
bool
sor_key_has_no_entry(SorTable *table, Datum key)
{
	SorDomain  *domain = table->domain;
	uint64		digest;

	if (domain->entries_cached != SOR_ENTRIES_ALL ||
		domain->entry_digests == NULL ||
		!key_digest(table->key_base_type, key, &digest))
		return false;
	return bsearch(&digest, domain->entry_digests, domain->n_entry_digests,
				   sizeof(uint64), digest_cmp) == NULL;
}

/*
 * What a bulk write looked up.  A transaction that holds its domain's write
 * lock (it escalated, lock.c) writes many records, often the same ones
 * again (the lines of one order, the events of one device).  Every owner
 * it looks up for an integer or uuid key is kept in a table of its own,
 * keyed by the key's value: the next row with that key needs neither the
 * key's text nor a lookup in the ownership caches, whose entries are larger
 * and farther away in memory.
 *
 * The answers stay true while the transaction holds the domain's lock,
 * since no other transaction can commit a change of the domain's ownership
 * before it ends; a change committed while a rolled back subtransaction had
 * let the lock go is taken in, with its invalidation, when the lock is
 * taken again.  So a table serves one transaction and one cache generation
 * (every invalidation starts it over), is asked only while the domain's
 * lock is held, and not at all once the transaction has changed an
 * ownership entry itself, the rule of the shared cache.  All tables of the
 * current generation live in bulk_context, a child of the transaction's
 * memory.  Text keys are not kept: their values have no fixed size.
 */

/* An integer key's value in lo (hi 0), or a uuid key's 16 bytes. */
typedef struct BulkKey
{
	uint64		lo;
	uint64		hi;
} BulkKey;

typedef struct BulkOwner
{
	BulkKey		key;
	int64		epoch;
	uint16		site;			/* index into BulkOwners.sites */
	bool		owned;
	bool		acks_missing;
	char		status;			/* used by simplehash */
} BulkOwner;

#define SH_PREFIX		bulk_owner
#define SH_ELEMENT_TYPE	BulkOwner
#define SH_KEY_TYPE		BulkKey
#define SH_KEY			key
#define SH_HASH_KEY(tb, key) \
	hash_combine(murmurhash32((uint32) ((key).lo ^ (key).hi)), \
				 murmurhash32((uint32) (((key).lo ^ (key).hi) >> 32)))
#define SH_EQUAL(tb, a, b)	((a).lo == (b).lo && (a).hi == (b).hi)
#define SH_SCOPE		static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/* At most this many keys per domain and transaction: a table of 8 MB. */
#define SOR_BULK_OWNERS_MAX		(1 << 17)
#define SOR_BULK_SITES_MAX		16

typedef struct BulkOwners
{
	bulk_owner_hash *owners;
	int64		hits;
	int64		misses;
	bool		given_up;		/* too few hits: neither asked nor filled */
	int			nsites;
	char		sites[SOR_BULK_SITES_MAX][NAMEDATALEN];
} BulkOwners;

static MemoryContext bulk_context = NULL;
static LocalTransactionId bulk_context_lxid = InvalidLocalTransactionId;
static uint64 bulk_context_generation = 0;

/* The value of an integer or uuid key, which names its record exactly. */
static bool
bulk_key(SorTable *table, Datum key, BulkKey *value)
{
	switch (table->key_base_type)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
			value->hi = 0;
			return key_digest(table->key_base_type, key, &value->lo);
		case UUIDOID:
			StaticAssertStmt(sizeof(BulkKey) == UUID_LEN,
							 "a bulk key holds a uuid");
			memcpy(value, DatumGetUUIDP(key)->data, UUID_LEN);
			return true;
		default:
			return false;
	}
}

/* domain's table of this transaction and generation, or NULL. */
static BulkOwners *
bulk_owners_of(SorDomain *domain)
{
	if (domain->bulk_owners != NULL &&
		domain->bulk_lxid == MyLocalTransactionId &&
		domain->bulk_generation == cache_generation &&
		!sor_transaction_changed_ownership())
		return domain->bulk_owners;
	return NULL;
}

/* A new, empty table for domain in this transaction and generation. */
static BulkOwners *
new_bulk_owners(SorDomain *domain)
{
	BulkOwners *bulk;

	if (bulk_context_lxid != MyLocalTransactionId)
	{
		/* the last one went with its transaction's memory */
		bulk_context = AllocSetContextCreate(TopTransactionContext,
											 "sor bulk owners",
											 ALLOCSET_DEFAULT_SIZES);
		bulk_context_lxid = MyLocalTransactionId;
	}
	else if (bulk_context_generation != cache_generation)
		MemoryContextReset(bulk_context);
	bulk_context_generation = cache_generation;
	bulk = MemoryContextAllocZero(bulk_context, sizeof(BulkOwners));
	bulk->owners = bulk_owner_create(bulk_context, 256, NULL);
	domain->bulk_owners = bulk;
	domain->bulk_lxid = MyLocalTransactionId;
	domain->bulk_generation = cache_generation;
	return bulk;
}

/*
 * The owner of key (a value of table's key column) as this transaction
 * looked it up before (sor_bulk_remember_owner()), into result; false if
 * it did not.  The caller holds the domain's write lock.
 */
bool
sor_bulk_owner(SorTable *table, Datum key, SorOwnership *result)
{
	BulkOwners *bulk = bulk_owners_of(table->domain);
	BulkOwner  *owner;
	BulkKey		value;

	if (bulk == NULL || bulk->given_up || !bulk_key(table, key, &value))
		return false;
	owner = bulk_owner_lookup(bulk->owners, value);
	if (owner == NULL)
	{
		bulk->misses++;
		return false;
	}
	bulk->hits++;
	memset(result, 0, sizeof(SorOwnership));
	result->owned = owner->owned;
	if (owner->owned)
		strlcpy(result->site, bulk->sites[owner->site], NAMEDATALEN);
	result->epoch = owner->epoch;
	result->acks_missing = owner->acks_missing;
	return true;
}

/*
 * Keep what sor_lookup_owner() answered for key, a value of table's key
 * column, for the rest of this transaction.  The caller holds the domain's
 * write lock, and has looked the owner up after taking it.
 */
void
sor_bulk_remember_owner(SorTable *table, Datum key,
						const SorOwnership *ownership)
{
	BulkOwners *bulk;
	BulkOwner  *owner;
	BulkKey		value;
	int			site = 0;
	bool		found;

	if (!bulk_key(table, key, &value) ||
		sor_transaction_changed_ownership())
		return;
	bulk = bulk_owners_of(table->domain);
	if (bulk == NULL)
		bulk = new_bulk_owners(table->domain);
	if (bulk->given_up)
		return;
	if (bulk->owners->members >= SOR_BULK_OWNERS_MAX)
	{
		/*
		 * Full.  A key not found costs a miss in memory too: with fewer
		 * hits than a quarter of the misses, the transaction writes most
		 * records once, and the table is no longer asked.
		 */
		bulk->given_up = bulk->hits < bulk->misses / 4;
		return;
	}
	if (ownership->owned)
	{
		while (site < bulk->nsites &&
			   strcmp(bulk->sites[site], ownership->site) != 0)
			site++;
		if (site == SOR_BULK_SITES_MAX)
			return;
		if (site == bulk->nsites)
			strlcpy(bulk->sites[bulk->nsites++], ownership->site, NAMEDATALEN);
	}
	owner = bulk_owner_insert(bulk->owners, value, &found);
	owner->epoch = ownership->epoch;
	owner->site = (uint16) site;
	owner->owned = ownership->owned;
	owner->acks_missing = ownership->acks_missing;
}

/* Put the ownership of (domain, key) into the ownership cache. */
static void
cache_ownership(SorDomain *domain, const char *key, uint64 record_hash,
				const SorOwnership *ownership)
{
	size_t		dlen = strlen(domain->name);
	Size		len = dlen + 1 + strlen(key);
	char	   *stored_key;
	OwnerCacheEntry *entry;
	bool		found;

	/* Keep the cache bounded: start over when it is full. */
	if (hash_get_num_entries(owner_cache) >= SOR_OWNER_CACHE_MAX)
	{
		forget_entries_cached(NULL);
		MemoryContextReset(owner_context);
		create_owner_cache();
	}

	stored_key = MemoryContextAlloc(owner_context, len + 1);
	memcpy(stored_key, domain->name, dlen + 1);
	strcpy(stored_key + dlen + 1, key);
	entry = hash_search(owner_cache, &record_hash, HASH_ENTER, &found);
	if (found)
	{
		/* another record with the same hash: its domain loses it */
		if (entry->len != len || memcmp(entry->domain_key, stored_key, len) != 0)
			forget_entries_cached(entry->domain_key);
		pfree(entry->domain_key);
	}
	entry->domain_key = stored_key;
	entry->len = len;
	entry->ownership = *ownership;
}

/*
 * Read every ownership entry of domain into the ownership cache, if it has
 * at most SOR_DOMAIN_PRELOAD_MAX; sets domain->entries_cached, and with
 * SOR_ENTRIES_ALL the entries' key digests (sor_key_has_no_entry()).
 */
static void
preload_entries(SorDomain *domain)
{
	ScanKeyData scankey;
	Relation	rel;
	Snapshot	snapshot;
	SysScanDesc scan;
	HeapTuple	tuple;
	int			n = 0;
	uint64	   *digests = palloc(sizeof(uint64) * SOR_DOMAIN_PRELOAD_MAX);
	bool		digested = true;

	domain->entries_cached = SOR_ENTRIES_SOME;
	ScanKeyInit(&scankey, Anum_owner_entry_domain, BTEqualStrategyNumber,
				F_TEXTEQ, CStringGetTextDatum(domain->name));
	rel = table_open(catalog.owner_entry, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, catalog.owner_entry_pkey, true, snapshot,
							  1, &scankey);
	while ((tuple = systable_getnext(scan)) != NULL)
	{
		Datum		values[Natts_owner_entry];
		bool		nulls[Natts_owner_entry];
		char	   *key;
		SorOwnership ownership;

		if (++n > SOR_DOMAIN_PRELOAD_MAX)
			break;
		deform_owner_entry(tuple, RelationGetDescr(rel), values, nulls);
		key = TextDatumGetCString(values[Anum_owner_entry_key - 1]);
		ownership_of_entry(domain, key, values, &ownership);
		cache_ownership(domain, key, sor_record_hash(domain->name, key),
						&ownership);
		digested = digested &&
			key_digest(domain->key_type,
					   InputFunctionCall(&domain->key_input, key,
										 domain->key_ioparam, -1),
					   &digests[n - 1]);
		pfree(key);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	/* unless the cache lost some of them meanwhile (then it is NOT_YET) */
	if (n <= SOR_DOMAIN_PRELOAD_MAX && domain->entries_cached == SOR_ENTRIES_SOME)
	{
		domain->entries_cached = SOR_ENTRIES_ALL;
		if (digested)
		{
			qsort(digests, n, sizeof(uint64), digest_cmp);
			domain->entry_digests = MemoryContextAlloc(cache_context,
													   sizeof(uint64) * Max(n, 1));
			memcpy(domain->entry_digests, digests, sizeof(uint64) * n);
			domain->n_entry_digests = n;
		}
	}
	pfree(digests);
}

/*
 * Put every ownership entry of domain that waits for no acknowledgement
 * into the shared cache (sor.prewarm_shared_cache()); returns how many it
 * put there.  The caller holds the domain's lock against hand-offs
 * (sor_lock_domain_against_handoffs()), taken before this scan's snapshot:
 * no entry of the domain changes until the transaction ends, and every
 * change after that empties the entry's slot.  The catalog is locked
 * against ALTER TABLE too (ShareUpdateExclusiveLock, which row changes do
 * not wait for): the ENABLE TRIGGER that ends a restore with the catalog's
 * triggers disabled waits, and then makes the slots filled here old.  If
 * the cache's generation moves during the scan all the same, the rest of
 * the entries are not put.
 *
 * The scan reads sor.owner_entry whole, in physical order: the domains
 * worth it have many entries, which the primary key would visit in key
 * order, a random read of the table each.
 */
int64
sor_prewarm_shared_cache(SorDomain *domain)
{
	ScanKeyData scankey;
	Relation	rel;
	Snapshot	snapshot;
	SysScanDesc scan;
	HeapTuple	tuple;
	MemoryContext per_entry;
	int64		n = 0;
	uint32		generation;

	per_entry = AllocSetContextCreate(CurrentMemoryContext,
									  "sor prewarm entry",
									  ALLOCSET_SMALL_SIZES);
	ScanKeyInit(&scankey, Anum_owner_entry_domain, BTEqualStrategyNumber,
				F_TEXTEQ, CStringGetTextDatum(domain->name));
	rel = table_open(catalog.owner_entry, ShareUpdateExclusiveLock);
	generation = sor_shared_cache_generation();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, InvalidOid, false, snapshot, 1, &scankey);
	while ((tuple = systable_getnext(scan)) != NULL)
	{
		Datum		values[Natts_owner_entry];
		bool		nulls[Natts_owner_entry];
		SorOwnership ownership;
		MemoryContext caller;
		char	   *key;

		CHECK_FOR_INTERRUPTS();
		deform_owner_entry(tuple, RelationGetDescr(rel), values, nulls);
		if (DatumGetBool(values[Anum_owner_entry_awaiting_acks - 1]))
			continue;
		caller = MemoryContextSwitchTo(per_entry);
		key = TextDatumGetCString(values[Anum_owner_entry_key - 1]);
		ownership_of_entry(domain, key, values, &ownership);
		if (sor_shared_cache_put(catalog.owner_entry, domain, key,
								 sor_record_hash(domain->name, key),
								 &ownership, generation))
			n++;
		MemoryContextSwitchTo(caller);
		MemoryContextReset(per_entry);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, NoLock);
	MemoryContextDelete(per_entry);
	return n;
}

/* Whether a text Datum is value. */
static bool
text_datum_is(Datum datum, const char *value)
{
	text	   *t = DatumGetTextPP(datum);
	size_t		len = strlen(value);

	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), value, len) == 0;
}

/*
 * Look the ownership entry of (domain, key) up in the catalog, under the
 * latest snapshot, through the hash index on key: true if there is one,
 * with the ownership it gives in entry, and in *awaiting_acks whether it
 * waits for acknowledgements.  A hash index is lossy (it keeps only the
 * hash), and keys repeat across domains, so each tuple it finds is checked
 * for both; systable_getnext() cannot recheck, so the scan is a plain index
 * scan.
 */
static bool
probe_owner_entry(SorDomain *domain, const char *key, SorOwnership *entry,
				  bool *awaiting_acks)
{
	ScanKeyData scankey;
	Relation	rel;
	Relation	index;
	Snapshot	snapshot;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	text	   *key_datum = cstring_to_text(key);
	bool		found = false;

	ScanKeyInit(&scankey, 1, HTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(key_datum));
	rel = table_open(catalog.owner_entry, AccessShareLock);
	index = index_open(catalog.owner_entry_key_hash, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	slot = table_slot_create(rel, NULL);
#if PG_VERSION_NUM >= 180000
	scan = index_beginscan(rel, index, snapshot, NULL, 1, 0);
#else
	scan = index_beginscan(rel, index, snapshot, 1, 0);
#endif
	index_rescan(scan, &scankey, 1, NULL, 0);
	while (!found && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		should_free;
		HeapTuple	tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);
		Datum		values[Natts_owner_entry];
		bool		nulls[Natts_owner_entry];

		deform_owner_entry(tuple, RelationGetDescr(rel), values, nulls);
		found = text_datum_is(values[Anum_owner_entry_key - 1], key) &&
			text_datum_is(values[Anum_owner_entry_domain - 1], domain->name);
		if (found)
		{
			ownership_of_entry(domain, key, values, entry);
			*awaiting_acks = DatumGetBool(values[Anum_owner_entry_awaiting_acks - 1]);
		}
		if (should_free)
			heap_freetuple(tuple);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	/* keep the locks, as a query would: the next probe finds them held */
	index_close(index, NoLock);
	table_close(rel, NoLock);
	pfree(key_datum);
	return found;
}

/* The cached ownership of (domain, key) into result; false if not cached. */
static bool
cached_ownership(SorDomain *domain, const char *key, uint64 record_hash,
				 SorOwnership *result)
{
	size_t		dlen = strlen(domain->name);
	OwnerCacheEntry *entry;

	entry = hash_search(owner_cache, &record_hash, HASH_FIND, NULL);
	if (entry == NULL || entry->len != dlen + 1 + strlen(key) ||
		strcmp(entry->domain_key, domain->name) != 0 ||
		strcmp(entry->domain_key + dlen + 1, key) != 0)
		return false;
	*result = entry->ownership;
	return true;
}

/*
 * The shared cache's answer for (domain, key) into result: false if it has
 * none.  The caller holds the record's write lock.
 */
static bool
shared_ownership(SorDomain *domain, const char *key, uint64 record_hash,
				 SorOwnership *result)
{
	SorOwnership entry;
	bool		has_entry;

	if (!sor_shared_cache_get(catalog.owner_entry, domain, key,
							  record_hash, &has_entry, &entry))
		return false;
	if (has_entry)
		*result = entry;
	else
		default_ownership(domain, result);
	return true;
}

/*
 * Who owns (domain, key): its ownership entry, else the domain's default
 * owner, else nobody.  key must be in canonical form, record_hash its
 * sor_record_hash(); both may be left out (NULL, 0) for a key known to have
 * no entry (!has_entries, or sor_key_has_no_entry()).  write_locked: the
 * caller holds the record's write lock (sor_lock_record_for_write()), so
 * the shared cache may answer, and what a probe finds may be shared with
 * other backends (shared_cache.c).
 *
 * A domain with few entries is read whole at its first miss; after that a
 * key that is not in the cache has no entry, and its answer needs no index
 * probe.  In a domain with more entries a write asks the shared cache
 * first, then this backend's cache, then probes the index, and caches what
 * the probe found in both.  What the shared cache answers is not copied
 * into this backend's cache: the next write finds it there again, and a
 * backend-local table that grows toward every key of a large domain costs
 * more to search, in memory stalls, than the shared cache's one bucket.
 */
void
sor_lookup_owner(SorDomain *domain, const char *key, uint64 record_hash,
				 bool write_locked, SorOwnership *result)
{
	SorOwnership entry;
	bool		has_entry;
	bool		awaiting_acks = false;
	bool		asked_shared = false;
	uint32		generation;

	load_catalog();

	/* a key without an entry: no lookup, nothing to cache */
	if (!domain->has_entries || key == NULL)
	{
		default_ownership(domain, result);
		return;
	}

	if (write_locked && domain->entries_cached == SOR_ENTRIES_SOME)
	{
		if (shared_ownership(domain, key, record_hash, result))
			return;
		asked_shared = true;
	}
	if (cached_ownership(domain, key, record_hash, result))
		return;
	if (domain->entries_cached == SOR_ENTRIES_NOT_YET)
	{
		preload_entries(domain);
		if (cached_ownership(domain, key, record_hash, result))
			return;
	}
	if (domain->entries_cached == SOR_ENTRIES_ALL)
	{
		default_ownership(domain, result);
		return;
	}
	if (write_locked && !asked_shared &&
		shared_ownership(domain, key, record_hash, result))
		return;

	generation = sor_shared_cache_generation();
	has_entry = probe_owner_entry(domain, key, &entry, &awaiting_acks);
	if (has_entry)
		*result = entry;
	else
		default_ownership(domain, result);
	cache_ownership(domain, key, record_hash, result);
	if (write_locked && !awaiting_acks)
		sor_shared_cache_put(catalog.owner_entry, domain, key,
							 record_hash, has_entry ? &entry : NULL,
							 generation);
}

/*
 * The canonical text form of key in domain: read with the domain's key type
 * and written back out, so that '007' and '7' name the same integer key.
 * Bad input raises the type's own error.
 */
char *
sor_canonical_key(SorDomain *domain, const char *key)
{
	Datum		value = InputFunctionCall(&domain->key_input, (char *) key,
										  domain->key_ioparam, -1);

	return OutputFunctionCall(&domain->key_output, value);
}
