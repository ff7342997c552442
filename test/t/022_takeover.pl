# Fenced takeover (G4, G6).  paris is cut off from the other sites and
# keeps writing its records; london takes some of them over
# (sor.takeover), then, in a second round, everything paris owns
# (sor.takeover_site, default-owned keys included), and writes them.  When
# paris comes back every site holds london's data; none of paris's cut-off
# changes is applied over it and none is lost: london and tokyo list them
# in sor.conflicts (not_owner), paris lists the rows the takeover displaced
# (displaced); paris refuses further writes to those records (SR001).  An
# operator applies or discards the listed changes with sor.apply_conflict
# and sor.discard_conflict, which check their input.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use SorSites;

my $t_start = time;
my $s = SorSites->new;
my @sites = $s->names;

# The conflicts listed at $site for keys from $lo to $hi, one line each:
# reason, origin, owner, epoch, table, key, operation and the changed
# column (name, or the order and its amount).
sub conflicts
{
	my ($site, $lo, $hi) = @_;
	return $s->sql($site, qq{
		SELECT coalesce(string_agg(concat_ws(' ', reason, origin_site, owner_site, epoch, tbl,
		                                     key, operation,
		                                     coalesce(new_row->>'name',
		                                              (coalesce(new_row, old_row)->>'order_id')
		                                              || ':' || coalesce(new_row->>'amount', ''))),
		                           E'\n' ORDER BY id), '')
		  FROM sor.conflicts WHERE key::bigint BETWEEN $lo AND $hi});
}

sub conflict_id
{
	my ($site, $cond) = @_;
	my $id = $s->sql($site, "SELECT id FROM sor.conflicts WHERE $cond");
	die "no single conflict at $site where $cond" unless $id =~ /^\d+$/;
	return $id;
}

# The rows of customers $lo..$hi and their orders, as one string.
sub rows
{
	my ($site, $lo, $hi) = @_;
	return $s->sql($site, qq{
		SELECT (SELECT string_agg(id || '=' || name, ';' ORDER BY id)
		          FROM customer WHERE id BETWEEN $lo AND $hi)
		       || ' | ' ||
		       (SELECT string_agg(order_id || '=' || amount, ';' ORDER BY order_id)
		          FROM orders WHERE customer_id BETWEEN $lo AND $hi)});
}

# ---------------------------------------------------------------------
# 1. sor.takeover of single records.
#
# 401, 402, 404: owned by paris as default owner; 403: owned by paris
# through an entry (it went to tokyo and came back).  london takes over
# 401..403; 404 stays paris's; 406 is new, written by paris while cut off.
# ---------------------------------------------------------------------
$s->sql('paris', q{
	INSERT INTO customer SELECT i, 'orig ' || i FROM generate_series(401, 404) i;
	INSERT INTO orders VALUES (40101, 401, 1), (40102, 401, 2), (40201, 402, 1),
	                          (40202, 402, 2), (40301, 403, 1), (40401, 404, 1);
});
$s->transfer('paris', 403, 'tokyo');
$s->transfer('tokyo', 403, 'paris');
$s->sync;
is($s->sql('london', q{SELECT site || '@' || epoch FROM sor.ownership WHERE key = '403'}),
	'paris@2', 'customer 403 is back at paris, epoch 2');
my $before = rows('london', 401, 406);

$s->isolate('paris');
my @cut = (
	q{UPDATE customer SET name = 'paris cut 1' WHERE id = 401},
	q{UPDATE customer SET name = 'paris cut 2' WHERE id = 401},
	q{INSERT INTO orders VALUES (40109, 401, 9)},
	q{DELETE FROM orders WHERE order_id = 40202},
	q{UPDATE customer SET name = 'paris cut' WHERE id = 402},
	q{UPDATE orders SET amount = 333 WHERE order_id = 40301},
	q{UPDATE customer SET name = 'paris cut legit' WHERE id = 404},
	q{INSERT INTO customer VALUES (406, 'paris cut new')},
);
for my $w (@cut)
{
	my $r = $s->try('paris', $w);
	ok($r->{ok}, "cut-off paris accepts its own write: $w") or diag($r->{error});
}

is($s->sql('london', q{
	SELECT sor.takeover('customer', '401') || ',' || sor.takeover('customer', '402')
	       || ',' || sor.takeover('customer', '403')}),
	'1,1,3', 'london takes 401..403 over, each with a raised epoch');
is($s->sql('london', q{
	SELECT string_agg(key || ' ' || action || ' ' || from_site || '>' || to_site || '@' || epoch, ', ' ORDER BY seq)
	  FROM sor.ownership_history WHERE recorded_at_site = 'london' AND action = 'takeover'}),
	'401 takeover paris>london@1, 402 takeover paris>london@1, 403 takeover paris>london@3',
	'the takeovers are in the history');
$s->sql('london', q{
	UPDATE customer SET name = 'london took 401' WHERE id = 401;
	INSERT INTO orders VALUES (40250, 402, 50);
});
ok($s->wait_for('tokyo', q{SELECT name FROM customer WHERE id = 401}, 'london took 401'),
	'tokyo gets the takeover and london\'s writes');
is($s->sql('tokyo', q{SELECT string_agg(sor.owner_of('customer', k), ',') FROM unnest('{401,402,403,404}'::text[]) k}),
	'london,london,london,paris', 'tokyo knows london owns 401..403');
is(conflicts('tokyo', 400, 499), '', "tokyo's displaced copies equalled london's: nothing kept");
is($s->sql('paris', q{SELECT string_agg(sor.owner_of('customer', k), ',') FROM unnest('{401,402,403}'::text[]) k}),
	'paris,paris,paris', 'paris, cut off, still believes it owns them');

$s->reconnect('paris');
$s->sync;
$s->assert_identical('after paris came back');

my $want = '401=london took 401;402=orig 402;403=orig 403;404=paris cut legit;406=paris cut new'
  . ' | 40101=1;40102=2;40201=1;40202=2;40250=50;40301=1;40401=1';
is(rows($_, 401, 406), $want,
	"$_: london's data won for 401..403; paris's own 404 and 406 changes are applied") for @sites;

my $listed = join("\n",
	'not_owner paris london 1 customer 401 UPDATE paris cut 1',
	'not_owner paris london 1 customer 401 UPDATE paris cut 2',
	'not_owner paris london 1 orders 401 INSERT 40109:9',
	'not_owner paris london 1 orders 402 DELETE 40202:',
	'not_owner paris london 1 customer 402 UPDATE paris cut',
	'not_owner paris london 3 orders 403 UPDATE 40301:333');
is(conflicts($_, 400, 499), $listed,
	"$_ lists every change paris made to the taken records while cut off, in order") for qw(london tokyo);
is($s->sql('paris', q{
	SELECT string_agg(concat_ws(' ', reason, origin_site, owner_site, epoch, tbl, key, operation,
	                            coalesce(new_row->>'name', (new_row->>'order_id') || ':' || (new_row->>'amount'))),
	                  E'\n' ORDER BY tbl::text, key, new_row::text)
	  FROM sor.conflicts WHERE key::bigint BETWEEN 400 AND 499}),
	join("\n",
		'displaced paris london 1 customer 401 INSERT paris cut 2',
		'displaced paris london 1 customer 402 INSERT paris cut',
		'displaced paris london 1 orders 401 INSERT 40109:9',
		'displaced paris london 3 orders 403 INSERT 40301:333'),
	'paris lists its rows that the takeover displaced (those that differ from london\'s)');

for my $k (401 .. 403)
{
	my $r = $s->try('paris', "UPDATE customer SET name = 'paris again' WHERE id = $k");
	is($r->{sqlstate} // 'accepted', 'SR001', "paris refuses to write customer $k now");
	like($r->{message} // '', qr/owned by site "london"/, 'and names the new owner');
}
my $r = $s->try('paris', q{INSERT INTO orders VALUES (40190, 401, 1)});
is($r->{sqlstate} // 'accepted', 'SR001', 'paris refuses new rows of a taken record');
$s->sql('paris', q{UPDATE customer SET name = 'paris after' WHERE id = 404});

# settle the listed changes at london
my $c_update = conflict_id('london', q{key = '401' AND new_row->>'name' = 'paris cut 2'});
my $c_insert = conflict_id('london', q{key = '401' AND operation = 'INSERT'});
my $c_delete = conflict_id('london', q{key = '402' AND operation = 'DELETE'});
my $c_first = conflict_id('london', q{key = '401' AND new_row->>'name' = 'paris cut 1'});
my $c_amount = conflict_id('london', q{key = '403'});
my $c_name = conflict_id('london', q{key = '402' AND operation = 'UPDATE'});

$r = $s->try('tokyo', 'SELECT sor.apply_conflict('
	  . conflict_id('tokyo', q{key = '401' AND new_row->>'name' = 'paris cut 2'}) . ')');
is($r->{sqlstate} // 'accepted', 'SR001', 'sor.apply_conflict at a site that does not own the record is refused');
like($r->{message} // '', qr/owned by site "london"/, 'and names the owner');
$r = $s->try('paris', 'SELECT sor.apply_conflict('
	  . conflict_id('paris', q{key = '401' AND tbl = 'customer'::regclass}) . ')');
is($r->{sqlstate} // 'accepted', 'SR001', 'paris cannot apply its displaced row either');

for my $id ($c_update, $c_insert, $c_delete)
{
	$r = $s->try('london', "SELECT sor.apply_conflict($id)");
	ok($r->{ok}, "london applies conflict $id") or diag($r->{error});
}
$s->sql('london', "SELECT sor.discard_conflict($c_first)");
is(conflicts('london', 400, 499), join("\n",
		'not_owner paris london 1 customer 402 UPDATE paris cut',
		'not_owner paris london 3 orders 403 UPDATE 40301:333'),
	'applied and discarded changes are no longer listed at london');
$s->sql('london', "SELECT sor.discard_conflict($c_amount)");
$s->sql('london', "SELECT sor.discard_conflict($c_name)");
is(conflicts('london', 400, 499), '', 'nothing is left at london');
is(conflicts('tokyo', 400, 499), $listed, "tokyo's list is its own: unchanged");

# bad input
for my $f (qw(apply_conflict discard_conflict))
{
	$r = $s->try('london', "SELECT sor.$f(NULL)");
	is(($r->{sqlstate} // 'accepted') . ' ' . ($r->{message} // ''),
		'22004 conflict id must not be null', "sor.$f(NULL) is refused");
	$r = $s->try('london', "SELECT sor.$f(987654)");
	is(($r->{sqlstate} // 'accepted') . ' ' . ($r->{message} // ''),
		'42704 conflict 987654 does not exist', "sor.$f() of an unknown id is refused");
	$r = $s->try('london', "SELECT sor.$f($c_first)");
	is($r->{sqlstate} // 'accepted', '42704', "sor.$f() of a conflict already settled is refused");
}

$s->sync;
$s->assert_identical('after the conflicts were settled');
$want = '401=paris cut 2;402=orig 402;403=orig 403;404=paris after;406=paris cut new'
  . ' | 40101=1;40102=2;40109=9;40201=1;40250=50;40301=1;40401=1';
is(rows($_, 401, 406), $want, "$_ has the applied changes (update, insert, delete) of paris") for @sites;

# ---------------------------------------------------------------------
# 2. sor.takeover_site: london takes everything paris owns, the records
# that paris owns by default included.
#
# 501, 502: paris's by default; 503: paris's by an entry; 504: tokyo's.
# ---------------------------------------------------------------------
$s->sql('paris', q{
	INSERT INTO customer SELECT i, 'orig ' || i FROM generate_series(501, 504) i;
	INSERT INTO orders VALUES (50101, 501, 1), (50301, 503, 1);
});
$s->transfer('paris', 503, 'tokyo');
$s->transfer('tokyo', 503, 'paris');
$s->transfer('paris', 504, 'tokyo');
$s->sync;
is($s->sql('paris', q{
	SELECT string_agg(sor.owner_of('customer', k), ',') FROM unnest('{404,406,501,502,503,504}'::text[]) k}),
	'paris,paris,paris,paris,paris,tokyo', 'before: paris owns all but 504');

$s->isolate('paris');
for my $w (
	q{UPDATE customer SET name = 'paris cut' WHERE id = 501},
	q{INSERT INTO customer VALUES (507, 'paris cut new')},
	q{UPDATE orders SET amount = 999 WHERE order_id = 50301})
{
	$r = $s->try('paris', $w);
	ok($r->{ok}, "cut-off paris accepts: $w") or diag($r->{error});
}
$s->sql('tokyo', q{UPDATE customer SET name = 'tokyo legit' WHERE id = 504});
is($s->sql('london', q{SELECT sor.takeover_site('paris')}), '2',
	'sor.takeover_site takes the domain default and the one entry paris had');
is($s->sql('london', q{SELECT default_site || '@' || default_epoch FROM sor.domain WHERE name = 'customer'}),
	'london@1', 'london is the default owner now, with a raised epoch');
$s->sql('london', q{
	UPDATE customer SET name = 'london after takeover' WHERE id = 502;
	INSERT INTO customer VALUES (508, 'london new');
});
ok($s->wait_for('tokyo', q{SELECT count(*) FROM customer WHERE id = 508}, '1'),
	'tokyo gets london\'s writes');
is($s->sql('tokyo', q{
	SELECT string_agg(sor.owner_of('customer', k), ',') FROM unnest('{404,501,503,504,509}'::text[]) k}),
	'london,london,london,tokyo,london', 'tokyo knows london owns what paris owned');
is(conflicts('tokyo', 500, 599), '', "tokyo's displaced copies equalled london's: nothing kept");

$s->reconnect('paris');
$s->sync;
$s->assert_identical('after paris came back again');
$want = '501=orig 501;502=london after takeover;503=orig 503;504=tokyo legit;508=london new'
  . ' | 50101=1;50301=1';
is(rows($_, 501, 509), $want, "$_: london's data won, paris's cut-off rows are not there") for @sites;
is(rows($_, 401, 406), '401=paris cut 2;402=orig 402;403=orig 403;404=paris after;406=paris cut new'
	  . ' | 40101=1;40102=2;40109=9;40201=1;40250=50;40301=1;40401=1',
	"$_: the records taken over by default are unchanged") for @sites;
$listed = join("\n",
	'not_owner paris london 1 customer 501 UPDATE paris cut',
	'not_owner paris london 1 customer 507 INSERT paris cut new',
	'not_owner paris london 3 orders 503 UPDATE 50301:999');
is(conflicts($_, 500, 599), $listed, "$_ lists paris's cut-off changes") for qw(london tokyo);
is($s->sql('paris', q{
	SELECT string_agg(concat_ws(' ', reason, origin_site, owner_site, epoch, tbl, key, operation,
	                            coalesce(new_row->>'name', (new_row->>'order_id') || ':' || (new_row->>'amount'))),
	                  E'\n' ORDER BY tbl::text, key, new_row::text)
	  FROM sor.conflicts WHERE key::bigint BETWEEN 500 AND 599}),
	join("\n",
		'displaced paris london 1 customer 501 INSERT paris cut',
		'displaced paris london 1 customer 507 INSERT paris cut new',
		'displaced paris london 3 orders 503 INSERT 50301:999'),
	'paris lists its displaced rows');
for my $w (
	q{UPDATE customer SET name = 'x' WHERE id = 404},
	q{INSERT INTO customer VALUES (509, 'x')},
	q{UPDATE customer SET name = 'x' WHERE id = 503})
{
	$r = $s->try('paris', $w);
	is($r->{sqlstate} // 'accepted', 'SR001', "paris refuses: $w");
	like($r->{message} // '', qr/owned by site "london"/, 'and names london');
}
$r = $s->try('tokyo', q{UPDATE customer SET name = 'tokyo still' WHERE id = 504});
ok($r->{ok}, 'tokyo still writes its own record');
$s->sync;
$s->assert_identical('after takeover_site');

# ---------------------------------------------------------------------
# 3. The cut-off owner hands a record on while another site takes it
# over.  london gives 601 to paris; paris is cut off, writes 601 and
# transfers it to tokyo (it still believes it owns it); london takes 601
# over and writes it.  Both ownership changes carry the same epoch.  When
# paris is back, every site must agree on one owner and hold that owner's
# data; the takeover fences paris, so london's data is expected, and
# paris's cut-off change is listed.
# ---------------------------------------------------------------------
$s->sql('london', q{INSERT INTO customer VALUES (601, 'orig 601'); INSERT INTO orders VALUES (60101, 601, 1)});
$s->transfer('london', 601, 'paris');
$s->sql('paris', q{CALL write_when_owner(601, ' paris', 30)});
$s->sync;
my $e601 = $s->sql('london', q{SELECT epoch FROM sor.ownership WHERE key = '601'});
$s->isolate('paris');
$s->sql('paris', q{
	UPDATE customer SET name = 'paris cut 601' WHERE id = 601;
	SELECT sor.transfer('customer', '601', 'tokyo');});
is($s->sql('london', q{SELECT sor.takeover('customer', '601')}), $e601 + 1,
	'london takes 601 over while paris, cut off, hands it to tokyo');
$s->sql('london', q{UPDATE customer SET name = 'london took 601' WHERE id = 601});
$s->reconnect('paris');
$s->sync;
my %owner601 = map { $_ => $s->sql($_, q{
	SELECT site || '@' || epoch FROM sor.ownership WHERE key = '601'}) } @sites;
note "owner of 601 after the takeover met paris's transfer: "
  . join(', ', map { "$_ sees $owner601{$_}" } @sites);
is($owner601{$_}, $owner601{paris}, "$_ agrees on the owner of 601") for @sites;
is($owner601{london}, 'london@' . ($e601 + 1), "the takeover wins over the fenced owner's transfer");
my %rows601 = map { $_ => rows($_, 601, 601) } @sites;
note "601 at $_: $rows601{$_}" for @sites;
is($rows601{$_}, "601=london took 601 | 60101=1", "$_ has london's data for 601") for @sites;
note "conflicts for 601 at $_:\n" . conflicts($_, 601, 601) for @sites;
like(conflicts($_, 601, 601), qr/^not_owner paris london \d+ customer 601 UPDATE paris cut 601$/m,
	"$_ lists paris's cut-off write to 601") for qw(london tokyo);
$s->assert_identical('at the end');
my @dup = $s->log_lines($SorSites::DUPLICATE_OR_MISSING);
note 'pglogical conflicts (row already there or missing), expected only from takeovers: '
  . scalar(@dup);

$s->teardown;
note sprintf('%.1f s in all', time - $t_start);
done_testing();
