# pg_dump keeps sor's catalog and protection: a database restored from a
# dump has the same sites, local site, registrations and ownership, and
# still refuses writes of records other sites own.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE origin');
$node->safe_psql('origin', q{
	CREATE EXTENSION sor;
	SELECT sor.add_site('paris'), sor.add_site('london');
	SELECT sor.set_local_site('paris');
	CREATE TABLE customer (id bigint PRIMARY KEY, name text);
	CREATE TABLE visit (customer_id bigint NOT NULL, at date NOT NULL)
		PARTITION BY RANGE (at);
	CREATE TABLE visit_2026 PARTITION OF visit
		FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
	SELECT sor.register_table('customer', 'id', 'customer', 'paris');
	SELECT sor.register_table('visit', 'customer_id', 'customer');
	INSERT INTO customer VALUES (1, 'one'), (2, 'two');
	INSERT INTO visit VALUES (2, '2026-05-01');
	SELECT sor.transfer('customer', '2', 'london');
	CREATE TABLE handled (n int);
	CREATE FUNCTION handle(p jsonb) RETURNS void LANGUAGE sql
		AS $$ INSERT INTO handled VALUES ((p->>'n')::int) $$;
	SELECT sor.enqueue('g', 'handle(jsonb)', '{"n": 1}');
	SELECT sor.enqueue('g', 'handle(jsonb)', '{"n": 2}');
	SELECT sor.drain(1);
});

my $dump = $node->basedir . '/origin.sql';
$node->command_ok(
	[ 'pg_dump', '-d', $node->connstr('origin'), '-f', $dump ],
	'pg_dump of a database with sor');

$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dump ],
	'the dump restores without errors');

my $catalog = q{
	SELECT sor.local_site(),
	       (SELECT string_agg(name, ',' ORDER BY name) FROM sor.site),
	       (SELECT string_agg(tbl::text || ':' || domain || ':' || key_column, ',' ORDER BY tbl::text)
	          FROM sor.registered_table),
	       (SELECT string_agg(domain || '/' || key || '=' || site || '@' || epoch, ',')
	          FROM sor.ownership),
	       (SELECT count(*) FROM sor.ownership_history)
};
is($node->safe_psql('restored', $catalog), $node->safe_psql('origin', $catalog),
	'catalog restored as it was');

my $triggers = q{
	SELECT string_agg(tgrelid::regclass::text || '.' || tgname || '=' || tgenabled::text, ','
	                  ORDER BY tgrelid::regclass::text, tgname)
	  FROM pg_trigger WHERE tgname LIKE 'zzz_sor%'
};
is($node->safe_psql('restored', $triggers), $node->safe_psql('origin', $triggers),
	'sor triggers restored, enabled ALWAYS');

my ($ret, $out, $err) = $node->psql('restored',
	q{UPDATE customer SET name = 'stolen' WHERE id = 2});
isnt($ret, 0, 'write of a record owned by london refused after restore');
like($err, qr/owned by site "london"/, 'refusal names the owner');

($ret, $out, $err) = $node->psql('restored',
	q{INSERT INTO visit VALUES (2, '2026-06-01')});
like($err, qr/owned by site "london"/, 'partitions still covered after restore');

$node->safe_psql('restored', q{UPDATE customer SET name = 'uno' WHERE id = 1});
is($node->safe_psql('restored', 'SELECT name FROM customer WHERE id = 1'),
	'uno', 'write of an owned record goes through after restore');

($ret, $out, $err) = $node->psql('restored', 'TRUNCATE customer CASCADE');
like($err, qr/cannot truncate registered table/, 'TRUNCATE refused after restore');

# the queue goes on where it was: a command enqueued after the restore
# runs after the one that was waiting (command ids do not start over)
$node->safe_psql('restored', q{SELECT sor.enqueue('g', 'handle(jsonb)', '{"n": 3}')});
is($node->safe_psql('restored', 'SELECT sor.drain()'), '2',
	'after restore, the waiting and the new command run');
is($node->safe_psql('restored', q{SELECT string_agg(n::text, ',' ORDER BY n) FROM handled}),
	'1,2,3', 'in order, each once');

$node->stop;
done_testing();
