/*-------------------------------------------------------------------------
 *
 * sor.c
 *	  Module entry point of the sor extension: configuration and start-up.
 *
 * The library is loaded either by shared_preload_libraries or on first use
 * of one of its functions (the enforcement trigger, sor.owner_of, ...).
 * Either way each backend defines sor's settings and registers its cache
 * invalidation callback and its planner hook (queue.c) here.  Only when
 * preloaded does it also set up the shared memory and the launcher of the
 * command workers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "sor.h"

PG_MODULE_MAGIC;

int			sor_workers = 2;
int			sor_batch_size = 100;
int			sor_retry_limit = 5;
int			sor_retry_backoff = 1000;
int			sor_retry_backoff_max = 300000;
int			sor_idle_wakeup = 10000;
int			sor_shared_cache_entries = 65536;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("sor.workers",
							"Command workers per database with sor.",
							"Needs shared_preload_libraries = 'sor'.",
							&sor_workers, 2, 0, 64,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("sor.batch_size",
							"Commands that a worker runs in one transaction, of one group or several.",
							NULL,
							&sor_batch_size, 100, 1, 100000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("sor.retry_limit",
							"Attempts of a failing command before its group is parked.",
							NULL,
							&sor_retry_limit, 5, 1, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("sor.retry_backoff",
							"Wait after the first failure of a command; it doubles with every further one.",
							NULL,
							&sor_retry_backoff, 1000, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("sor.retry_backoff_max",
							"Longest wait between two attempts of a failing command.",
							NULL,
							&sor_retry_backoff_max, 300000, 0, 86400000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("sor.idle_wakeup",
							"Longest sleep of an idle worker; new commands wake it at once.",
							NULL,
							&sor_idle_wakeup, 10000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	/* a postmaster setting can be defined only while preloading */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("sor.shared_cache_entries",
								"Ownership entries kept in shared memory for every backend.",
								"About 160 bytes each; 0 turns the shared cache off.  Needs shared_preload_libraries = 'sor'.",
								&sor_shared_cache_entries, 65536, 0, 64 * 1024 * 1024,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);

	/* The local site is a catalog row, never a setting: keep "sor." ours. */
	MarkGUCPrefixReserved("sor");

	sor_cache_init();
	sor_lock_init();
	sor_shared_cache_init();
	sor_stats_init();
	sor_queue_init();
	sor_launcher_init();
}
