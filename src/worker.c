/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  A command worker: drains the queue of one database.
 *
 * Started by the launcher (launcher.c), sor.workers per database.  Each
 * pass is one transaction that runs up to sor.batch_size commands, of one
 * group or several (queue.c).  When there is nothing to run it sleeps on
 * its latch, which a committing enqueue sets, for at most sor.idle_wakeup,
 * or until a group in backoff is due.  A worker that finds the extension
 * gone exits and tells the launcher so.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "sor.h"

static SorWorkerSlot *my_slot = NULL;

static void
leave_slot(int code, Datum arg)
{
	sor_slot_lock(true);
	my_slot->proc = NULL;
	my_slot->pid = 0;
	sor_slot_unlock();
}

/*
 * One pass: run what is ready, up to sor.batch_size commands of as many
 * groups as it takes, in one transaction (one commit for many small
 * groups); when nothing was ready, forget empty groups instead.  Returns
 * whether to go on at once: commands ran, or empty groups may be left.
 * Sets *next_due_ms as sor_run_commands does, and *gone when the extension
 * is not installed in this database.
 */
static bool
run_pass(long *next_due_ms, bool *gone)
{
	int			ran = 0;
	bool		more = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	*gone = !OidIsValid(get_extension_oid("sor", true));
	if (!*gone)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "sor: running commands");
		ran = sor_run_commands(sor_batch_size, sor_batch_size, InvalidOid,
							   my_slot, next_due_ms);
		more = ran > 0 || sor_forget_empty_groups();
		PopActiveSnapshot();
		SPI_finish();
	}
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return more;
}

PGDLLEXPORT void sor_worker_main(Datum main_arg);

void
sor_worker_main(Datum main_arg)
{
	Oid			dboid;
	bool		starting;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();

	my_slot = sor_worker_slot(DatumGetInt32(main_arg));
	sor_slot_lock(false);
	dboid = my_slot->dboid;
	starting = my_slot->state == SOR_SLOT_STARTING && my_slot->pid == 0;
	sor_slot_unlock();
	if (!starting)
		proc_exit(0);			/* a new launcher took the slot back */

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	/* queue maintenance runs as the superuser, with a safe search_path */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET,
					PGC_S_OVERRIDE);
	SetConfigOption("application_name", "sor worker", PGC_USERSET,
					PGC_S_OVERRIDE);
	/* every query must see what the previous consumer of a group did */
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_USERSET, PGC_S_OVERRIDE);

	sor_slot_lock(true);
	my_slot->pid = MyProcPid;
	my_slot->proc = MyProc;
	my_slot->state = SOR_SLOT_IDLE;
	my_slot->started_at = GetCurrentTimestamp();
	sor_slot_unlock();
	before_shmem_exit(leave_slot, (Datum) 0);

	for (;;)
	{
		long		next_due_ms = -1;
		long		timeout;
		bool		gone;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* clear the latch first: a wake-up during the pass is not lost */
		ResetLatch(MyLatch);
		if (run_pass(&next_due_ms, &gone))
			continue;
		if (gone)
		{
			sor_slot_lock(true);
			my_slot->state = SOR_SLOT_NO_EXTENSION;
			sor_slot_unlock();
			proc_exit(0);
		}

		timeout = (long) sor_idle_wakeup;
		if (next_due_ms >= 0 && next_due_ms < timeout)
			timeout = next_due_ms;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
	}
}
