/*-------------------------------------------------------------------------
 *
 * sor.c
 *	  Module entry point of the sor extension.
 *
 * The library is loaded either by shared_preload_libraries or on first use
 * of one of its functions (the enforcement trigger, sor.owner_of, ...).
 * Either way each backend registers its cache invalidation callback here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "sor.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	/* The local site is a catalog row, never a setting: keep "sor." ours. */
	MarkGUCPrefixReserved("sor");

	sor_cache_init();
}
