/*-------------------------------------------------------------------------
 *
 * functions.c
 *	  SQL-callable functions of sor written in C.
 *
 * Most of sor's SQL interface is PL/pgSQL in the install script.  What is
 * here either reads the caches (sor.owner_of), needs the lock manager
 * (the hand-off locks), or passes the calling role on to the PL/pgSQL
 * implementation (sor_call_with_invoker).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "sor.h"

PG_FUNCTION_INFO_V1(sor_owner_of);
PG_FUNCTION_INFO_V1(sor_canonical_key_sql);
PG_FUNCTION_INFO_V1(sor_key_type_family);
PG_FUNCTION_INFO_V1(sor_lock_record_for_handoff_sql);
PG_FUNCTION_INFO_V1(sor_lock_domain_for_handoff_sql);
PG_FUNCTION_INFO_V1(sor_call_with_invoker);
PG_FUNCTION_INFO_V1(sor_local_site_sql);
PG_FUNCTION_INFO_V1(sor_prewarm_shared_cache_sql);

/* Text argument argno, which must be neither NULL nor empty. */
char *
sor_required_text_arg(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	char	   *value;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", argname)));
	value = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", argname)));
	return value;
}

/*
 * sor.owner_of(domain text, key text) returns text
 *
 * The site that owns the record, or NULL when it has no owner.
 */
Datum
sor_owner_of(PG_FUNCTION_ARGS)
{
	char	   *domain_name = sor_required_text_arg(fcinfo, 0, "domain");
	char	   *key = sor_required_text_arg(fcinfo, 1, "key");
	SorDomain  *domain;
	SorOwnership owner;

	AcceptInvalidationMessages();
	sor_cache_revalidate();
	domain = sor_lookup_domain(domain_name, false);
	key = sor_canonical_key(domain, key);
	sor_lookup_owner(domain, key, sor_record_hash(domain->name, key), false,
					 &owner);
	if (!owner.owned)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(owner.site));
}

/*
 * sor.prewarm_shared_cache(domain text) returns bigint
 *
 * Fill the shared ownership cache with the domain's entries, as writes of
 * all its records would: how many it put there.  Hand-offs of the domain
 * wait until the transaction ends.
 */
Datum
sor_prewarm_shared_cache_sql(PG_FUNCTION_ARGS)
{
	char	   *domain_name = sor_required_text_arg(fcinfo, 0, "domain");
	SorDomain  *domain;

	/* the lock first: what comes after it sees the hand-offs it waited for */
	sor_lock_domain_against_handoffs(domain_name);
	sor_cache_revalidate();
	domain = sor_lookup_domain(domain_name, false);
	sor_shared_cache_check_usable();
	PG_RETURN_INT64(sor_prewarm_shared_cache(domain));
}

/*
 * sor.canonical_key(domain text, key text) returns text
 *
 * The key as sor stores it: read and written back by the domain's key type.
 */
Datum
sor_canonical_key_sql(PG_FUNCTION_ARGS)
{
	char	   *domain_name = sor_required_text_arg(fcinfo, 0, "domain");
	char	   *key = sor_required_text_arg(fcinfo, 1, "key");
	SorDomain  *domain;

	sor_cache_revalidate();
	domain = sor_lookup_domain(domain_name, false);
	PG_RETURN_TEXT_P(cstring_to_text(sor_canonical_key(domain, key)));
}

/*
 * sor.key_type_family(regtype) returns regtype
 *
 * The type by which a domain with keys of this type reads and writes them,
 * or NULL if the type cannot be a key.
 */
Datum
sor_key_type_family(PG_FUNCTION_ARGS)
{
	Oid			family = sor_key_family_type(PG_GETARG_OID(0));

	if (!OidIsValid(family))
		PG_RETURN_NULL();
	PG_RETURN_OID(family);
}

/*
 * sor.lock_record_for_handoff(domain text, key text)
 *
 * Take the lock that a change of the record's owner needs; waits for the
 * transactions that have written the record.  Internal: EXECUTE is revoked
 * from PUBLIC.
 */
Datum
sor_lock_record_for_handoff_sql(PG_FUNCTION_ARGS)
{
	sor_lock_record_for_handoff(sor_required_text_arg(fcinfo, 0, "domain"),
								sor_required_text_arg(fcinfo, 1, "key"));
	PG_RETURN_VOID();
}

/*
 * sor.lock_domain_for_handoff(domain text)
 *
 * Take the lock that a change of the domain's default owner needs.
 * Internal: EXECUTE is revoked from PUBLIC.
 */
Datum
sor_lock_domain_for_handoff_sql(PG_FUNCTION_ARGS)
{
	sor_lock_domain_for_handoff(sor_required_text_arg(fcinfo, 0, "domain"));
	PG_RETURN_VOID();
}

/* What sor_call_with_invoker keeps across calls. */
typedef struct InvokerCall
{
	int			nargs;
	FmgrInfo	impl;
} InvokerCall;

/*
 * Entry point of every sor function that changes state.
 *
 * The SQL function sor.NAME(args) is declared with this C symbol; it calls
 * sor.NAME_impl(args, invoker oid), a SECURITY DEFINER PL/pgSQL function
 * that does the work, passing the role that called sor.NAME.  A SECURITY
 * DEFINER function cannot learn who called it, and the implementations need
 * to know: to check that the caller owns a table it registers, and to
 * record who changed ownership.  EXECUTE on sor.NAME decides who may call;
 * EXECUTE on sor.NAME_impl is granted to nobody, since fmgr calls made here
 * are not subject to it.
 */
Datum
sor_call_with_invoker(PG_FUNCTION_ARGS)
{
	InvokerCall *call = (InvokerCall *) fcinfo->flinfo->fn_extra;
	LOCAL_FCINFO(implcall, FUNC_MAX_ARGS);
	Datum		result;
	int			i;

	if (call == NULL)
	{
		HeapTuple	proctup;
		Form_pg_proc proc;
		Oid			argtypes[FUNC_MAX_ARGS];
		char	   *implname;
		List	   *qualname;
		Oid			implid;

		proctup = SearchSysCache1(PROCOID,
								  ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
		if (!HeapTupleIsValid(proctup))
			elog(ERROR, "cache lookup failed for function %u",
				 fcinfo->flinfo->fn_oid);
		proc = (Form_pg_proc) GETSTRUCT(proctup);
		if (proc->pronargs >= FUNC_MAX_ARGS)
			elog(ERROR, "too many arguments for %s", NameStr(proc->proname));

		memcpy(argtypes, proc->proargtypes.values, proc->pronargs * sizeof(Oid));
		argtypes[proc->pronargs] = OIDOID;
		implname = psprintf("%s_impl", NameStr(proc->proname));
		qualname = list_make2(makeString(get_namespace_name(proc->pronamespace)),
							  makeString(implname));
		implid = LookupFuncName(qualname, proc->pronargs + 1, argtypes, false);

		call = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(InvokerCall));
		call->nargs = proc->pronargs;
		fmgr_info_cxt(implid, &call->impl, fcinfo->flinfo->fn_mcxt);
		ReleaseSysCache(proctup);
		fcinfo->flinfo->fn_extra = call;
	}

	InitFunctionCallInfoData(*implcall, &call->impl, call->nargs + 1,
							 fcinfo->fncollation, NULL, NULL);
	for (i = 0; i < call->nargs; i++)
		implcall->args[i] = fcinfo->args[i];
	implcall->args[call->nargs].value = ObjectIdGetDatum(GetUserId());
	implcall->args[call->nargs].isnull = false;

	result = FunctionCallInvoke(implcall);
	fcinfo->isnull = implcall->isnull;
	return result;
}

/*
 * sor.local_site() returns text
 *
 * The local site's name, or NULL while it is not set.
 */
Datum
sor_local_site_sql(PG_FUNCTION_ARGS)
{
	const char *local;

	AcceptInvalidationMessages();
	sor_cache_revalidate();
	local = sor_local_site();
	if (local == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(local));
}
