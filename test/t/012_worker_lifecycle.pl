# Life and death of the workers: SIGTERM ends a worker within a second,
# idle or in the middle of a command (which is not counted as a failure and
# runs again), and the launcher replaces it; a database gets workers when
# CREATE EXTENSION sor commits there and loses them for good after DROP
# EXTENSION sor, within sor.idle_wakeup, or after DROP DATABASE ... WITH
# (FORCE), without a worker started for the database that is gone.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $idle_wakeup = 0.5;    # seconds

my $node = PostgreSQL::Test::Cluster->new('lifecycle');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'sor'
sor.idle_wakeup = 500ms
max_worker_processes = 16
});
$node->start;

sub worker_count
{
	my ($db) = @_;
	return qq{SELECT count(*) FROM pg_stat_activity
	           WHERE backend_type = 'sor worker' AND datname = '$db'};
}

sub worker_pids
{
	my ($db) = @_;
	return split /\n/, $node->safe_psql('postgres', qq{
		SELECT pid FROM pg_stat_activity
		 WHERE backend_type = 'sor worker' AND datname = '$db' ORDER BY pid});
}

$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', q{
	CREATE EXTENSION sor;
	CREATE TABLE log (
		id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		g   text NOT NULL,
		seq int NOT NULL,
		attempts int,
		pid int NOT NULL DEFAULT pg_backend_pid());
	CREATE FUNCTION record(p jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO log (g, seq) VALUES (p->>'g', (p->>'seq')::int)
	$$;
	-- the first call sleeps long; nextval() is not rolled back, so a
	-- second call (the same command run again) does not
	CREATE SEQUENCE calls;
	CREATE FUNCTION sleepy(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF nextval('calls') = 1 THEN
			PERFORM pg_sleep(30);
		END IF;
		-- and what the queue says of this command's failed attempts
		INSERT INTO log (g, seq, attempts)
		SELECT p->>'g', (p->>'seq')::int, attempts
		  FROM sor.command WHERE group_key = p->>'g';
	END
	$$;
});
my $workers = $node->safe_psql('app', 'SHOW sor.workers');
ok($node->poll_query_until('app', worker_count('app'), $workers), "$workers workers run");

# Wait until the database has $workers workers, none of them in @gone;
# returns the seconds since $t0, or undef.
sub wait_for_replacement
{
	my ($t0, @gone) = @_;
	my $list = join(',', @gone);
	return $node->poll_query_until('app', worker_count('app') . " AND pid NOT IN ($list)",
		$workers) ? time - $t0 : undef;
}

# ---------------------------------------------------------------------
# SIGTERM to an idle worker
# ---------------------------------------------------------------------
ok($node->poll_query_until('app',
		q{SELECT count(*) FROM sor.workers WHERE state = 'idle'}, $workers),
	'the workers are idle');
my ($idle) = worker_pids('app');
my $t0 = time;
ok(kill('TERM', $idle), "SIGTERM to idle worker $idle");
usleep(5_000) while kill(0, $idle) && time - $t0 < 10;
my $exit_time = time - $t0;
ok(!kill(0, $idle), 'the idle worker exited');
cmp_ok($exit_time, '<', 1, 'within 1 s');
diag(sprintf('idle worker exited %.0f ms after SIGTERM', $exit_time * 1000));
is($node->safe_psql('app', "SELECT count(*) FROM pg_stat_activity WHERE pid = $idle"),
	'0', 'it is gone from pg_stat_activity');
my $replaced = wait_for_replacement($t0, $idle);
ok(defined $replaced, 'the launcher started a replacement');
cmp_ok($replaced // 999, '<', 5, 'within 5 s');
diag(sprintf('replacement running %.2f s after SIGTERM', $replaced // -1));

# ---------------------------------------------------------------------
# pg_terminate_backend() of a worker in the middle of a command
# ---------------------------------------------------------------------
$node->safe_psql('app',
	q{SELECT sor.enqueue('sleepy', 'sleepy(jsonb)', '{"g": "sleepy", "seq": 1}')});
ok($node->poll_query_until('app', q{
	SELECT count(*) FROM sor.workers WHERE state = 'running' AND group_key = 'sleepy'}, '1'),
	'a worker runs the command');
my $busy = $node->safe_psql('app', q{
	SELECT pid FROM sor.workers WHERE state = 'running' AND group_key = 'sleepy'});
is($node->safe_psql('app', "SELECT wait_event FROM pg_stat_activity WHERE pid = $busy"),
	'PgSleep', 'the handler is sleeping');
my $log_offset = -s $node->logfile;
$t0 = time;
is($node->safe_psql('app', "SELECT pg_terminate_backend($busy)"), 't',
	"pg_terminate_backend($busy) of the busy worker");
usleep(5_000) while kill(0, $busy) && time - $t0 < 10;
$exit_time = time - $t0;
ok(!kill(0, $busy), 'the busy worker exited');
cmp_ok($exit_time, '<', 1, 'within 1 s');
diag(sprintf('busy worker exited %.0f ms after pg_terminate_backend()', $exit_time * 1000));
# the command was interrupted, not failed: it keeps its place and runs again
ok($node->poll_query_until('app', q{SELECT count(*) FROM log WHERE g = 'sleepy'}, '1'),
	'the interrupted command ran afterwards');
is($node->safe_psql('app', q{SELECT attempts FROM log WHERE g = 'sleepy'}), '0',
	'the interruption was not counted as a failed attempt');
is($node->safe_psql('app', q{
	SELECT (SELECT last_value FROM calls) || ' calls, ' || count(*) || ' logged, '
	       || count(*) FILTER (WHERE pid = } . $busy . q{) || ' by the terminated worker'
	  FROM log WHERE g = 'sleepy'}),
	'2 calls, 1 logged, 0 by the terminated worker',
	'the handler started twice and took effect once');
is($node->safe_psql('app', q{SELECT count(*) FROM sor.command}), '0', 'the queue is empty');
my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/sor command \d+ of group "sleepy" failed/, 'no failure was logged');
$replaced = wait_for_replacement($t0, $idle, $busy);
ok(defined $replaced, 'the launcher started a replacement');
cmp_ok($replaced // 999, '<', 5, 'within 5 s');
diag(sprintf('replacement running %.2f s after the busy worker was terminated', $replaced // -1));

# ---------------------------------------------------------------------
# A second database: workers come with CREATE EXTENSION and go with DROP
# EXTENSION (within sor.idle_wakeup), and are not started again.
# ---------------------------------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE other');
is($node->safe_psql('postgres', worker_count('other')), '0', 'no workers without the extension');
$node->safe_psql('other', q{
	CREATE EXTENSION sor;
	CREATE TABLE log (g text, seq int);
	CREATE FUNCTION record(p jsonb) RETURNS void LANGUAGE sql AS $$
		INSERT INTO log VALUES (p->>'g', (p->>'seq')::int)
	$$;
	SELECT sor.enqueue('o', 'record(jsonb)', '{"g": "o", "seq": 1}');
});
ok($node->poll_query_until('postgres', worker_count('other'), $workers),
	"$workers workers run in the second database");
ok($node->poll_query_until('other', q{SELECT count(*) FROM log}, '1'),
	'they run its commands');
my @app_workers = worker_pids('app');
is(scalar(@app_workers), $workers, 'the first database keeps its workers');

$node->safe_psql('other', 'DROP EXTENSION sor');
$t0 = time;
my $gone = $node->poll_query_until('postgres', worker_count('other'), '0');
my $gone_time = time - $t0;
ok($gone, 'the workers left after DROP EXTENSION');
cmp_ok($gone_time, '<', $idle_wakeup + 1, 'within sor.idle_wakeup (500 ms) plus 1 s');
diag(sprintf('workers gone %.2f s after DROP EXTENSION (sor.idle_wakeup = %.1f s)',
		$gone_time, $idle_wakeup));

# they must stay away: watch for longer than the launcher's restart delay
my $seen = 0;
my $until = time + 3;
while (time < $until)
{
	$seen += $node->safe_psql('postgres', worker_count('other'));
	usleep(100_000);
}
is($seen, 0, 'no worker came back to the database without the extension in 3 s');
is(join(',', worker_pids('app')), join(',', @app_workers),
	'the first database kept the same workers');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sor launcher'}),
	'1', 'the launcher still runs');

# and they come back with the extension
$node->safe_psql('other', 'CREATE EXTENSION sor');
ok($node->poll_query_until('postgres', worker_count('other'), $workers),
	'CREATE EXTENSION again brings the workers back');

# DROP DATABASE ... WITH (FORCE) ends them; the launcher sees the database
# gone before it would start them again (after its restart delay, 1 s)
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'DROP DATABASE other WITH (FORCE)');
usleep(3_000_000);
unlike(slurp_file($node->logfile, $log_offset), qr/FATAL:  database \d+ does not exist/,
	'no worker is started for a dropped database');
is(join(',', worker_pids('app')), join(',', @app_workers),
	'the first database kept the same workers');

# ---------------------------------------------------------------------
# Two databases that CREATE EXTENSION sor at about the same time both get
# workers.  The first commit makes the launcher probe every database
# without workers, the second one too; the second database's CREATE
# EXTENSION commits while that probe runs.  A race, so a dozen tries with
# different gaps between the two commits; each database must have its
# workers within 5 s.
# ---------------------------------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE r1');
$node->safe_psql('postgres', 'CREATE DATABASE r2');
my $both = q{SELECT count(*) FILTER (WHERE datname = 'r1') || '/' || count(*) FILTER (WHERE datname = 'r2')
               FROM pg_stat_activity WHERE backend_type = 'sor worker'};
my $s1 = $node->background_psql('r1');
my $s2 = $node->background_psql('r2');
my @tries;
for my $gap_us ((0, 500, 1000, 1500, 2000, 3000) x 2)
{
	$s1->query_safe('BEGIN; CREATE EXTENSION sor;');
	$s2->query_safe('BEGIN; CREATE EXTENSION sor;');
	$s1->query_safe('COMMIT');
	usleep($gap_us);
	$s2->query_safe('COMMIT');
	$t0 = time;
	my $running = '';
	while (time - $t0 < 5)
	{
		$running = $node->safe_psql('postgres', $both);
		last if $running eq "$workers/$workers";
		usleep(50_000);
	}
	push @tries, sprintf('%d us apart: %s workers after %.2f s', $gap_us, $running, time - $t0);
	last if $running ne "$workers/$workers";
	$s1->query_safe('DROP EXTENSION sor');
	$s2->query_safe('DROP EXTENSION sor');
	$node->poll_query_until('postgres', $both, '0/0')
	  or die 'the workers did not leave';
}
diag("CREATE EXTENSION in r1 and r2, workers in r1/r2:\n  " . join("\n  ", @tries));
diag('sor installed in r1/r2: '
	  . join('/', map { $node->safe_psql($_, q{SELECT count(*) FROM pg_extension WHERE extname = 'sor'}) } qw(r1 r2))
	  . '; sor.worker_status(): '
	  . $node->safe_psql('app', q{
		SELECT string_agg(database || ' ' || state, ', ' ORDER BY database) FROM sor.worker_status()}));
is(scalar(grep { !/: $workers\/$workers workers/ } @tries), 0,
	'both databases got their workers every time');
$s1->quit;
$s2->quit;

$node->stop;
done_testing();
