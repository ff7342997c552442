# The shared ownership cache names domains and sites by numbers from a
# table of 1,024 names in shared memory (src/shared_cache.c).  When the
# table is full, the entries of sites it has no number for are not kept,
# writes of their records are still answered right (by a probe of
# sor.owner_entry), and the server log says so once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('names');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'sor'
sor.workers = 0
});
$node->start;

# 1,030 sites, each the owner of one key of domain "d": more entries than
# a session reads whole, so writes ask the shared cache
$node->safe_psql('postgres', q{
	CREATE EXTENSION sor;
	SELECT sor.add_site(format('s%s', lpad(i::text, 4, '0')))
	  FROM generate_series(1, 1030) i;
	SELECT sor.set_local_site('s0001');
	CREATE TABLE t (id bigint PRIMARY KEY, v text);
	SELECT sor.register_table('t', 'id', 'd');
	INSERT INTO sor.owner_entry (domain, key, site, epoch)
	SELECT 'd', i::text, format('s%s', lpad(i::text, 4, '0')), 1
	  FROM generate_series(1, 1030) i;
});

my $log_offset = -s $node->logfile;

# "d" takes the first number, sites s0001 to s1023 the other 1,023
is($node->safe_psql('postgres', q{SELECT sor.prewarm_shared_cache('d')}),
	'1023', 'a full table of names leaves the entries of 7 sites out');
# another session is told the same, without logging it again
is($node->safe_psql('postgres', q{SELECT sor.prewarm_shared_cache('d')}),
	'1023', 'and leaves them out for every session');

my $log = slurp_file($node->logfile, $log_offset);
my @full = ($log =~ /shared ownership cache has no room for the name "s1024"/g);
is(scalar @full, 1, 'the server log says once that the table is full');
unlike($log, qr/no room for the name "s10(2[5-9]|30)"/,
	'and not again for the next names');

# writes are answered right, from the shared cache or by a probe
is( $node->safe_psql(
		'postgres', q{
	BEGIN;
	INSERT INTO t VALUES (1, 'owned here');
	SELECT count(*) > 0 FROM pg_locks
	 WHERE pid = pg_backend_pid() AND relation = 'sor.owner_entry'::regclass;
	COMMIT;}),
	'f',
	'a key of the local site is answered from the shared cache');

my ($ret, $stdout, $stderr) =
  $node->psql('postgres', q{INSERT INTO t VALUES (1023, 'not owned here')});
like($stderr, qr/owned by site "s1023"/,
	'a key of a site with a number is refused from the shared cache');
($ret, $stdout, $stderr) =
  $node->psql('postgres', q{INSERT INTO t VALUES (1030, 'not owned here')});
like($stderr, qr/owned by site "s1030"/,
	'a key of a site without a number is refused too');

$node->stop;
done_testing();
