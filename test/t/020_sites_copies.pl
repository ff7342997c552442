# Three sites (paris, london, tokyo) replicating with pglogical: copies of
# every write arrive exactly once at every other site (G2); a write to a
# record that another site owns is refused at every site, whatever the
# statement, with SQLSTATE SR001 and a message that names the owner (G1),
# and counted in sor.refused_writes; a record written many times and then
# handed over arrives at its new owner with every one of those writes
# before the new owner may write it (G4, G5).
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
note sprintf('three sites joined in %.1f s', time - $t_start);

# ---------------------------------------------------------------------
# Ownership: paris owns every customer by default; it hands 2001..2010 to
# london and 3001..3010 to tokyo.
# ---------------------------------------------------------------------
$s->sql('paris', q{
	SELECT count(sor.transfer('customer', i::text, 'london')) FROM generate_series(2001, 2010) i;
	SELECT count(sor.transfer('customer', i::text, 'tokyo')) FROM generate_series(3001, 3010) i;
});
$s->sync;
for my $site (@sites)
{
	is($s->sql($site, q{
		SELECT sor.owner_of('customer', '1001') || ' ' || sor.owner_of('customer', '2005')
		       || ' ' || sor.owner_of('customer', '3010') || ' '
		       || (SELECT count(*) FROM sor.handoffs)}),
		'paris london tokyo 0', "$site: every site knows the owners; no hand-off in flight");
}

# ---------------------------------------------------------------------
# 1. Writes at the owners arrive once at every site.
# ---------------------------------------------------------------------
my %base = (paris => 1000, london => 2000, tokyo => 3000);
for my $site (@sites)
{
	my $b = $base{$site};
	$s->sql($site, qq{
		INSERT INTO customer SELECT $b + i, '$site customer ' || i FROM generate_series(1, 10) i;
		INSERT INTO orders SELECT ($b + i) * 100 + j, $b + i, i * 10 + j
		  FROM generate_series(1, 10) i, generate_series(1, 3) j;
		UPDATE customer SET name = name || ' (updated)' WHERE id IN ($b + 1, $b + 2);
		UPDATE orders SET amount = amount + 1000 WHERE customer_id = $b + 3;
		DELETE FROM orders WHERE customer_id = $b + 10;
		DELETE FROM customer WHERE id = $b + 10;
		DELETE FROM orders WHERE order_id = ($b + 9) * 100 + 1;
	});
}
$s->sync;

# what every site must hold, as written
my (@cust, @ord);
for my $site (@sites)
{
	my $b = $base{$site};
	for my $i (1 .. 9)
	{
		push @cust, ($b + $i) . "=$site customer $i" . ($i <= 2 ? ' (updated)' : '');
		for my $j (1 .. 3)
		{
			next if $i == 9 && $j == 1;
			push @ord, (($b + $i) * 100 + $j) . '=' . ($b + $i) . ':'
			  . ($i * 10 + $j + ($i == 3 ? 1000 : 0));
		}
	}
}
my $expected = join(';', @cust) . "\n" . join(';', sort { $a <=> $b } @ord);
for my $site (@sites)
{
	is($s->sql($site, q{
		SELECT (SELECT string_agg(id || '=' || name, ';' ORDER BY id) FROM customer)
		       || E'\n' ||
		       (SELECT string_agg(order_id || '=' || customer_id || ':' || amount, ';' ORDER BY order_id)
		          FROM orders)}),
		$expected, "$site holds every row written at the three owners, once, as last written");
}
$s->assert_identical('after writes at the owners');
for my $site (@sites)
{
	is($s->sql($site, q{
		SELECT (SELECT count(*) FROM sor.conflicts) || ' conflicts, '
		       || (SELECT count(*) FILTER (WHERE status = 'replicating') FROM pglogical.show_subscription_status())
		       || ' subscriptions replicating'}),
		'0 conflicts, 2 subscriptions replicating', "$site: nothing set aside, the streams run");
}

# ---------------------------------------------------------------------
# 2. Writes to a record owned elsewhere are refused at every site, for
# every kind of statement, and counted.
# ---------------------------------------------------------------------
my $before = $s->checksum('paris');
my %refused_expected;    # site -> "table owner" -> count
for my $site (@sites)
{
	for my $owner (grep { $_ ne $site } @sites)
	{
		my $b = $base{$owner};
		my $own = $base{$site} + 1;    # a record the site owns
		my $k3 = $b + 3;
		my @writes = (
			[ customer => "INSERT INTO customer VALUES ($b + 10, 'intruder')", $b + 10 ],
			[ customer => "UPDATE customer SET name = 'intruder' WHERE id = $b + 1", $b + 1 ],
			[ customer => "DELETE FROM customer WHERE id = $b + 2", $b + 2 ],
			[ customer => "INSERT INTO customer VALUES ($b + 1, 'x') ON CONFLICT (id) DO UPDATE SET name = 'upsert'", $b + 1 ],
			# moving an own row to a key owned elsewhere checks the new key
			[ customer => "UPDATE customer SET id = $b + 10 WHERE id = $own", $b + 10 ],
			[ orders => "INSERT INTO orders VALUES (99999, $b + 1, 1)", $b + 1 ],
			[ orders => "UPDATE orders SET amount = 0 WHERE customer_id = $b + 1", $b + 1 ],
			[ orders => "DELETE FROM orders WHERE customer_id = $b + 2", $b + 2 ],
			[ orders => "COPY orders FROM PROGRAM 'echo 99998,$k3,1' WITH (FORMAT csv)", $k3 ],
		);
		for my $w (@writes)
		{
			my ($tbl, $sql, $key) = @$w;
			my $r = $s->try($site, $sql);
			is($r->{sqlstate} // 'accepted', 'SR001', "$site: refused ($owner owns it): $sql");
			like($r->{message} // '',
				qr/^cannot write key "$key" of table "public\.$tbl" at site "$site": the record is owned by site "$owner"$/,
				"$site: the message names table, key, local site and owner");
			like($r->{error}, qr/HINT:\s+Send the write to site "$owner"/, "$site: the hint names the owner");
			$refused_expected{$site}{"$tbl $owner"}++;
		}
	}
}
# and a TRUNCATE anywhere
for my $site (@sites)
{
	my $r = $s->try($site, 'TRUNCATE orders');
	is($r->{sqlstate} // 'accepted', 'SR004', "$site: TRUNCATE of a registered table is refused");
}
$s->sync;
is($s->checksum($_), $before, "$_: the refused writes changed nothing") for @sites;
for my $site (@sites)
{
	my $got = $s->sql($site, q{
		SELECT string_agg(tbl::text || ' ' || owner_site || ' ' || sqlstate || ' ' || refused, ', '
		                  ORDER BY tbl::text, owner_site, sqlstate)
		  FROM sor.refused_writes});
	my $want = join(', ', map { "$_ SR001 $refused_expected{$site}{$_}" }
		  sort keys %{ $refused_expected{$site} });
	is($got, $want, "$site: sor.refused_writes counts the refused writes per table, owner and SQLSTATE");
}

# ---------------------------------------------------------------------
# 3. Ordered hand-off: paris writes customer 1005 fifty times (and adds an
# order each time), then hands it to london, in one flow of separate
# transactions.  london tries to write it every millisecond from before the
# flow starts: when its first write is accepted, paris's last write and
# every order are there.
# ---------------------------------------------------------------------
my $orders_before = $s->sql('paris', 'SELECT count(*) FROM orders WHERE customer_id = 1005');
my $london = $s->session('london');
SorSites->launch($london,
	q{CALL write_when_owner(1005, ' > london', 15)});
my $flow = join("\n", map {
	"UPDATE customer SET name = 'paris write $_' WHERE id = 1005;\n"
	  . "INSERT INTO orders VALUES (1005000 + $_, 1005, $_);" } 1 .. 50);
$s->sql('paris', $flow . "\nSELECT sor.transfer('customer', '1005', 'london');");
my $r = SorSites->collect($london);
ok($r->{ok}, 'london could write customer 1005 after the hand-off') or diag($r->{error});
my ($got, $orders_seen, $tries, $sr001, $sr005) = split /\|/, $r->{out};
is($got, 'paris write 50 > london',
	"london's first accepted write came after paris's last write (G4, G5)");
is($orders_seen, $orders_before + 50, 'and saw every order paris added before the hand-off');
note "london tried $tries times: $sr001 refused with SR001 (owner paris), $sr005 with SR005 (hand-off not acknowledged)";
cmp_ok($sr001, '>', 0, 'london was refused while paris owned the record');
my $after = $s->try('paris', q{UPDATE customer SET name = 'late' WHERE id = 1005});
is($after->{sqlstate} // 'accepted', 'SR001', 'paris may not write it any more');
like($after->{message} // '', qr/owned by site "london"/, 'paris is told london owns it');
$s->sync;
$s->assert_identical('after the hand-off');
is($s->sql('tokyo', 'SELECT name FROM customer WHERE id = 1005'), 'paris write 50 > london',
	"tokyo has london's write on top of paris's last");

# ---------------------------------------------------------------------
# Exactly once: pglogical met no row that was already there (an INSERT
# applied twice) or missing (an UPDATE or DELETE before its INSERT).  An
# UPDATE of a row last written by another origin is logged as a conflict
# too ("remote UPDATE ... (local index ...)"): that is every hand-off, and
# not counted here.
# ---------------------------------------------------------------------
my @conflicts = $s->log_lines($SorSites::DUPLICATE_OR_MISSING);
is(scalar(@conflicts), 0, 'no site applied a change twice or missed a row (no pglogical conflicts)')
  or diag(join("\n", @conflicts[ 0 .. ($#conflicts < 9 ? $#conflicts : 9) ]));
for my $site (@sites)
{
	is($s->sql($site, 'SELECT count(*) FROM sor.conflicts'), '0', "$site: nothing set aside");
}

$london->quit;
$s->teardown;
note sprintf('%.1f s in all', time - $t_start);
done_testing();
