# Hand-offs wait for the writers of their own database only.  With sor in
# shared_preload_libraries a writer publishes the records it writes in
# shared memory that every database of the cluster shares (src/lock.c): a
# transfer, or a change of the local site, must wait for an open writer of
# its own database, and not for one of another database that writes a
# record of the same domain and key.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('databases');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'sor'
sor.workers = 0
});
$node->start;

for my $db (qw(one two))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, q{
		CREATE EXTENSION sor;
		SELECT sor.add_site('a');
		SELECT sor.add_site('b');
		SELECT sor.set_local_site('a');
		CREATE TABLE tbl (id bigint PRIMARY KEY, v text);
		SELECT sor.register_table('tbl', 'id', 'dom', 'a');
		INSERT INTO tbl VALUES (1, 'one'), (2, 'two');
	});
}

# runs sql in db with a lock timeout: '' if it succeeded, else its error
sub try_within
{
	my ($db, $timeout, $sql) = @_;
	my ($ret, $out, $err) =
	  $node->psql($db, "SET lock_timeout = '$timeout';\n$sql");
	return $ret == 0 ? '' : $err;
}

# an open writer of record ("dom", "1") in database one
my $writer = $node->background_psql('one');
$writer->query_safe(q{BEGIN; UPDATE tbl SET v = 'one, updated' WHERE id = 1;});

is(try_within('two', '5s', q{SELECT sor.transfer('dom', '1', 'b')}),
	'', 'a transfer in database two does not wait for a writer of database one');
is(try_within('two', '5s', q{SELECT sor.set_local_site('b', true)}),
	'', 'nor does a change of the local site in database two');
like(try_within('one', '1s', q{SELECT sor.transfer('dom', '1', 'b')}),
	qr/lock timeout/, 'a transfer in database one waits for its writer');
like(try_within('one', '1s', q{SELECT sor.set_local_site('b', true)}),
	qr/lock timeout/, 'and so does a change of its local site');

$writer->query_safe('COMMIT');
is(try_within('one', '5s', q{SELECT sor.transfer('dom', '1', 'b')}),
	'', 'after the writer has committed, the transfer goes through');
is($node->safe_psql('one', q{SELECT sor.owner_of('dom', '1') || '/' || v FROM tbl WHERE id = 1}),
	'b/one, updated', 'database one: key 1 is b\'s, with the write that came first');
is($node->safe_psql('two', q{SELECT sor.owner_of('dom', '1') || '/' || sor.local_site()}),
	'b/b', 'database two: key 1 is b\'s, and the local site is b');

$writer->quit;
$node->stop;
done_testing();
