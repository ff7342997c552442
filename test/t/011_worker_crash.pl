# C3 across crashes: when a worker is killed with SIGKILL in the middle of a
# drain (PostgreSQL then restarts every process), and when the postmaster
# itself is killed, no command is lost and none runs twice, and each group
# still runs in order.  A command's effects and its removal from the queue
# commit together.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'sor'
restart_after_crash = on
});
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', q{
	CREATE EXTENSION sor;
	-- no unique constraint: a command that ran twice must show, not fail
	CREATE TABLE log (
		id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		g   text NOT NULL,
		seq int NOT NULL);
	CREATE FUNCTION slow(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep(0.005);
		INSERT INTO log (g, seq) VALUES (p->>'g', (p->>'seq')::int);
	END
	$$;
});
my $workers = $node->safe_psql('app', 'SHOW sor.workers');
ok($node->poll_query_until('app', q{
	SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sor worker' AND datname = 'app'},
	$workers), 'the workers run');

my $n = 1500;    # at ~5 ms each, a few seconds of work for the workers

# Enqueue $n commands over 20 groups named $prefix<0..19>, in two
# transactions; returns once the workers have run a few hundred of them.
sub start_drain
{
	my ($prefix) = @_;
	for my $half (0, 1)
	{
		my ($from, $to) = ($half * $n / 2 + 1, ($half + 1) * $n / 2);
		$node->safe_psql('app', qq{
			SELECT count(sor.enqueue('$prefix' || (i % 20), 'slow(jsonb)',
			                         jsonb_build_object('g', '$prefix' || (i % 20), 'seq', i)))
			  FROM (SELECT i FROM generate_series($from, $to) i ORDER BY i) s});
	}
	$node->poll_query_until('app', qq{
		SELECT count(*) >= 200 FROM log WHERE g LIKE '$prefix%'})
	  or die "the workers did not start on the commands";
}

# After a crash: everything ran exactly once, in order, nothing is left.
sub check_drained
{
	my ($prefix, $what) = @_;
	my $t0 = time;
	ok($node->poll_query_until('app', qq{
		SELECT count(*) >= $n FROM log WHERE g LIKE '$prefix%'}),
		"$what: the drain finished");
	note sprintf('%s: drain finished %.1f s after the restart', $what, time - $t0);
	is($node->safe_psql('app', qq{
		SELECT count(*) || ' rows, ' || count(DISTINCT (g, seq)) || ' distinct, '
		       || count(*) FILTER (WHERE g <> '$prefix' || (seq % 20)) || ' misplaced, '
		       || min(seq) || '..' || max(seq)
		  FROM log WHERE g LIKE '$prefix%'}),
		"$n rows, $n distinct, 0 misplaced, 1..$n",
		"$what: every command ran exactly once");
	is($node->safe_psql('app', qq{
		SELECT count(*) FROM (
			SELECT seq, lag(seq) OVER (PARTITION BY g ORDER BY id) AS prev
			  FROM log WHERE g LIKE '$prefix%') s
		 WHERE seq < prev}),
		'0', "$what: each group ran in enqueue order");
	is($node->safe_psql('app', q{
		SELECT (SELECT count(*) FROM sor.command) || '/' || (SELECT count(*) FROM sor.command_group)
		       || '/' || (SELECT count(*) FROM sor.skipped_command)}),
		'0/0/0', "$what: the queue is empty, nothing failed or was skipped");
}

# ---------------------------------------------------------------------
# kill -9 of a worker that is running commands
# ---------------------------------------------------------------------
start_drain('k');
my $victim = $node->safe_psql('app', q{
	SELECT pid FROM pg_stat_activity
	 WHERE backend_type = 'sor worker' AND datname = 'app' AND state = 'active'
	 ORDER BY pid LIMIT 1});
like($victim, qr/^\d+$/, 'found a worker running commands');
cmp_ok($node->safe_psql('app', q{SELECT count(*) FROM sor.command}), '>', 0,
	'commands are waiting: the kill hits mid-drain');
my $log_offset = -s $node->logfile;
my $old_workers = $node->safe_psql('app', q{
	SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'sor worker'});
ok(kill('KILL', $victim), "SIGKILL to worker $victim");

ok($node->poll_query_until('app', qq{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type = 'sor worker' AND datname = 'app' AND pid NOT IN ($old_workers)},
	$workers), 'after the crash restart the workers run again');
my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/background worker "sor worker" \(PID $victim\) was terminated by signal 9/,
	'the postmaster saw the worker die');
like($log, qr/all server processes terminated; reinitializing/, 'PostgreSQL restarted everything');
my $survivors = $node->safe_psql('app', qq{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type = 'sor worker' AND pid IN ($old_workers)});
is($survivors, '0', 'the workers are new processes');
check_drained('k', 'worker killed');

# ---------------------------------------------------------------------
# kill -9 of the postmaster
# ---------------------------------------------------------------------
start_drain('p');
# every server process, to wait for them to go before starting again
my @procs = split /\n/, $node->safe_psql('app', q{
	SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()});
cmp_ok($node->safe_psql('app', q{SELECT count(*) FROM sor.command}), '>', 0,
	'commands are waiting: the kill hits mid-drain');
$node->kill9;
my $deadline = time + 30;
usleep(20_000) while grep({ kill(0, $_) } @procs) && time < $deadline;
is(join(',', grep { kill(0, $_) } @procs), '', 'all server processes are gone');
$node->start;
ok($node->poll_query_until('app', q{
	SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sor worker' AND datname = 'app'},
	$workers), 'after the restart the workers run again');
check_drained('p', 'postmaster killed');

$node->stop;
done_testing();
