# What a command leaves behind in a worker goes with it, a role's
# statement_timeout holds for its handlers, and a launcher that is stopped
# comes back and brings the workers back.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = PostgreSQL::Test::Cluster->new('isolation');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'sor'
sor.workers = 1
sor.retry_limit = 1
sor.idle_wakeup = 500ms
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION sor;
	CREATE ROLE app LOGIN;
	GRANT CREATE, TEMPORARY ON DATABASE postgres TO app;
	CREATE TABLE seen (step text, value text);
	GRANT INSERT ON seen TO app;
	CREATE FUNCTION leave_state(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		CREATE TEMP TABLE leftover (x integer);
		PERFORM pg_advisory_lock(4242);
		PREPARE leftover_stmt AS SELECT 1;
		INSERT INTO seen VALUES ('first', 'ran');
	END $$;
	CREATE FUNCTION look_for_state(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO seen VALUES
			('temp table', coalesce(to_regclass('pg_temp.leftover')::text, 'gone')),
			('prepared', (SELECT count(*)::text FROM pg_prepared_statements)),
			('advisory lock', (SELECT count(*)::text FROM pg_locks
			                    WHERE locktype = 'advisory' AND objid = 4242));
	END $$;
	CREATE FUNCTION sleepy(p jsonb) RETURNS void LANGUAGE sql
		AS $$ SELECT pg_sleep(3) $$;
	ALTER ROLE app SET statement_timeout = '200ms';
});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) FROM sor.workers}, '1'), 'the worker runs');

# state a handler leaves is gone before the next command runs
$node->safe_psql('postgres', q{
	SET ROLE app;
	SELECT sor.enqueue('g', 'leave_state(jsonb)');
	SELECT sor.enqueue('g', 'look_for_state(jsonb)');
});
ok($node->poll_query_until('postgres', q{SELECT count(*) FROM seen}, '4'),
	'both commands ran');
is($node->safe_psql('postgres',
		q{SELECT string_agg(step || '=' || value, ', ' ORDER BY step) FROM seen WHERE step <> 'first'}),
	'advisory lock=0, prepared=0, temp table=gone',
	'no temporary table, prepared statement or session lock outlives its command');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242}),
	'0', 'the worker holds no advisory lock of the handler');

# the role's statement_timeout stops a handler that runs too long
my $t0 = time;
$node->safe_psql('postgres', q{SET ROLE app; SELECT sor.enqueue('slow', 'sleepy(jsonb)')});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) FROM sor.failed_commands WHERE group_key = 'slow'}, '1'),
	'the slow command failed');
my $took = time - $t0;
like($node->safe_psql('postgres',
		q{SELECT last_error FROM sor.failed_commands WHERE group_key = 'slow'}),
	qr/^57014: canceling statement due to statement timeout/,
	'it failed with the statement timeout');
cmp_ok($took, '<', 2.5, 'before the handler would have finished');
note(sprintf('slow handler stopped after %.2f s', $took));

# a launcher that is stopped comes back, and so do the workers
my $launcher = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'sor launcher'});
my $worker = $node->safe_psql('postgres', q{SELECT pid FROM sor.workers});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher)");
ok($node->poll_query_until('postgres', qq{
	SELECT count(*) FROM pg_stat_activity
	 WHERE backend_type = 'sor launcher' AND pid <> $launcher}, '1'),
	'a new launcher runs');
ok($node->poll_query_until('postgres', qq{
	SELECT count(*) FROM sor.workers WHERE pid <> $worker AND state = 'idle'}, '1'),
	'with a new worker in the database');
is($node->safe_psql('postgres', q{SELECT count(*) FROM sor.workers}), '1',
	'and only one');
$node->safe_psql('postgres', q{
	SELECT sor.enqueue('after', 'look_for_state(jsonb)');
});
ok($node->poll_query_until('postgres', q{SELECT count(*) FROM seen}, '7'),
	'commands run again');

$node->stop;
done_testing();
