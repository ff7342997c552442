# A seeded random run over three sites (G4, G5, G6): writes at the owners
# (insert, update, delete of customers and orders), transfers between
# random sites (retried while SR001/SR005 say the hand-off is on its way),
# writes attempted at sites that do not own the record (all must be
# refused), one stream paused for a while, and one site restarted (crash,
# immediate mode) in the middle.  Every write at the owner checks, in its
# own transaction, that the owner holds the record as the model says (the
# new owner has every earlier write).  At the end every site holds the
# same rows as the model, nothing is set aside, and no write was accepted
# at a non-owner.  The seed is printed; SOR_TEST_SEED=<n> repeats a run,
# SOR_TEST_OPS=<n> sets its length.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use SorSites;

my $seed = $ENV{SOR_TEST_SEED} // (time() ^ $$) % 1_000_000;
my $ops = $ENV{SOR_TEST_OPS} // 400;
srand($seed);
diag("random run: seed $seed, $ops operations (SOR_TEST_SEED=$seed repeats it)");

my $t_start = time;
my $s = SorSites->new;
my @sites = $s->names;
my @keys = (1 .. 30);

# the model: owner per key, rows per key
my %owner = map { $_ => 'paris' } @keys;
my %name;      # key -> customer name (absent: no row)
my %orders;    # order id -> [key, amount]
my $next_order = 1;
my %stat;
my $paused;    # "from>to" while a stream is paused
my @failures;
my @recent;    # the keys transferred last: half of the operations pick one

sub pick { return $_[ int(rand(@_)) ]; }

sub model_state
{
	my ($k) = @_;
	my @o = map { "$_:$orders{$_}[1]" }
	  sort { $a <=> $b } grep { $orders{$_}[0] == $k } keys %orders;
	return ($name{$k} // '<none>') . '|' . join(',', @o);
}

my $STATE = q{
	SELECT coalesce((SELECT name FROM customer WHERE id = %d), '<none>') || '|' ||
	       coalesce((SELECT string_agg(order_id || ':' || amount, ',' ORDER BY order_id)
	                   FROM orders WHERE customer_id = %d), '')};

# Run $sql at the owner of $k, retrying while the hand-off to it is on its
# way (SR001, or 22012 from the gate below) or not acknowledged (SR005).
# With a stream paused that may take until it resumes: then give up after a while (the model does not
# change).  Returns the result, or undef when given up.
sub at_owner
{
	my ($k, $sql, $what) = @_;
	my $site = $owner{$k};
	my $t0 = time;
	while (1)
	{
		my $r = $s->try($site, $sql);
		return $r if $r->{ok};
		my $state = $r->{sqlstate} // '';
		if ($state !~ /^(?:SR00[15]|22012)$/)
		{
			push @failures, "$what at $site failed: $r->{error}";
			return undef;
		}
		$stat{"owner $state retried"}++;
		my $limit = $paused ? 0.3 : 15;
		if (time - $t0 > $limit)
		{
			if ($paused)
			{
				$stat{'owner op given up while a stream was paused'}++;
				return undef;
			}
			push @failures, "$what at $site still refused after $limit s: $r->{message}";
			return undef;
		}
		usleep(2_000);
	}
}

sub owner_write
{
	my ($k, $n) = @_;
	my $site = $owner{$k};
	my ($sql, $apply);
	my $roll = rand;
	if (!defined $name{$k})
	{
		$sql = "INSERT INTO customer VALUES ($k, '$site op $n')";
		$apply = sub { $name{$k} = "$site op $n" };
	}
	elsif ($roll < 0.35)
	{
		$sql = "UPDATE customer SET name = '$site op $n' WHERE id = $k";
		$apply = sub { $name{$k} = "$site op $n" };
	}
	elsif ($roll < 0.65)
	{
		my $id = $next_order++;
		my $amount = int(rand(100));
		$sql = "INSERT INTO orders VALUES ($id, $k, $amount)";
		$apply = sub { $orders{$id} = [ $k, $amount ] };
	}
	elsif ($roll < 0.75)
	{
		$sql = "UPDATE orders SET amount = amount + 1 WHERE customer_id = $k";
		$apply = sub { $_->[1]++ for grep { $_->[0] == $k } values %orders };
	}
	elsif ($roll < 0.9)
	{
		my @mine = sort { $a <=> $b } grep { $orders{$_}[0] == $k } keys %orders;
		my $id = @mine ? pick(@mine) : 0;
		$sql = "DELETE FROM orders WHERE order_id = $id AND customer_id = $k";
		$apply = sub { delete $orders{$id} };
	}
	else
	{
		$sql = "DELETE FROM orders WHERE customer_id = $k; DELETE FROM customer WHERE id = $k";
		$apply = sub {
			delete $name{$k};
			delete $orders{$_} for grep { $orders{$_}[0] == $k } keys %orders;
		};
	}
	# An UPDATE or DELETE that finds no row fires no trigger: a site that
	# has not received the hand-off (nor the rows) yet would do nothing
	# and succeed.  The gate makes the transaction fail (22012) until the
	# site knows it owns the record; the trigger still decides the write.
	my $gate = "SELECT 1 / (sor.owner_of('customer', '$k') = sor.local_site())::int";
	my $r = at_owner($k, "BEGIN; $gate \\g /dev/null\n$sql; " . sprintf($STATE, $k, $k) . '; COMMIT;',
		"write to $k ($sql)");
	return unless $r;
	$apply->();
	$stat{'owner writes'}++;
	my $want = model_state($k);
	push @failures, "op $n: after writing $k at $site the owner holds '$r->{out}', the model says '$want'"
	  if $r->{out} ne $want;
	return;
}

sub transfer
{
	my ($k, $n) = @_;
	my $from = $owner{$k};
	my $to = pick(grep { $_ ne $from } @sites);
	my $r = at_owner($k, "SELECT sor.transfer('customer', '$k', '$to')",
		"transfer of $k to $to");
	return unless $r;
	$owner{$k} = $to;
	$stat{transfers}++;
	unshift @recent, $k;
	splice(@recent, 3);
	return;
}

sub intruder_write
{
	my ($k, $n) = @_;
	my $site = pick(grep { $_ ne $owner{$k} } @sites);
	my $sql = pick(
		"INSERT INTO customer VALUES ($k, 'intruder $n') RETURNING 1",
		"UPDATE customer SET name = 'intruder $n' WHERE id = $k RETURNING 1",
		"DELETE FROM customer WHERE id = $k RETURNING 1",
		"INSERT INTO orders VALUES (1000000 + $n, $k, 1) RETURNING 1",
		"UPDATE orders SET amount = -1 WHERE customer_id = $k RETURNING 1",
		"DELETE FROM orders WHERE customer_id = $k RETURNING 1");
	my $r = $s->try($site, $sql);
	if ($r->{ok})
	{
		if ($r->{out} ne '')
		{
			$stat{'non-owner writes accepted'}++;
			push @failures, "op $n: $site (not the owner, $owner{$k} is) accepted: $sql";
		}
		else
		{
			$stat{'non-owner writes that found no row'}++;
		}
	}
	elsif (($r->{sqlstate} // '') =~ /^SR00[15]$/)
	{
		$stat{"non-owner writes refused ($r->{sqlstate})"}++;
	}
	else
	{
		push @failures, "op $n: $site: unexpected error for $sql: $r->{error}";
	}
	return;
}

my $pause_at = int($ops * 0.15);
my $resume_at = int($ops * 0.35);
my $restart_at = int($ops * 0.55);
for my $n (1 .. $ops)
{
	if ($n == $pause_at)
	{
		my $from = pick(@sites);
		my $to = pick(grep { $_ ne $from } @sites);
		note "op $n: pausing the stream $from -> $to";
		$s->pause($from, $to);
		$paused = "$from>$to";
	}
	if ($n == $resume_at)
	{
		my ($from, $to) = split />/, $paused;
		note "op $n: resuming the stream $from -> $to";
		$s->resume($from, $to);
		$paused = undef;
	}
	if ($n == $restart_at)
	{
		my $site = pick(@sites);
		note "op $n: restarting $site (immediate)";
		$s->restart($site, 'immediate');
		$stat{"restarted $site"}++;
	}
	# half of the time a record just handed over, so that writes, refused
	# writes and transfers meet hand-offs in flight
	my $k = (@recent && rand() < 0.5) ? pick(@recent) : pick(@keys);
	my $roll = rand;
	if ($roll < 0.5) { owner_write($k, $n); }
	elsif ($roll < 0.62) { transfer($k, $n); }
	else { intruder_write($k, $n); }
}
my $run_time = time - $t_start;

# catch up
for my $site (@sites)
{
	ok($s->wait_for($site, q{
		SELECT count(*) FILTER (WHERE status = 'replicating') FROM pglogical.show_subscription_status()}, '2'),
		"$site: both subscriptions replicate");
}
$s->sync;

diag(join(', ', map { "$_: $stat{$_}" } sort keys %stat));
is(scalar(@failures), 0, 'every write at the owner and every transfer went as the model says')
  or diag(join("\n", @failures[ 0 .. ($#failures < 19 ? $#failures : 19) ]));
is($stat{'non-owner writes accepted'} // 0, 0, 'no write was accepted at a site that does not own the record');
cmp_ok($stat{transfers} // 0, '>', 20, 'records changed hands');

$s->assert_identical('after the random run');
my $model = join(';', map { "$_=$name{$_}" } sort { $a <=> $b } keys %name) . "\n"
  . join(';', map { "$_=$orders{$_}[0]:$orders{$_}[1]" } sort { $a <=> $b } keys %orders);
for my $site (@sites)
{
	is($s->sql($site, q{
		SELECT coalesce((SELECT string_agg(id || '=' || name, ';' ORDER BY id) FROM customer), '')
		       || E'\n' ||
		       coalesce((SELECT string_agg(order_id || '=' || customer_id || ':' || amount, ';' ORDER BY order_id)
		                   FROM orders), '')}),
		$model, "$site holds exactly the rows the owners wrote");
	is($s->sql($site, q{
		SELECT (SELECT count(*) FROM sor.conflicts) || ' conflicts, '
		       || (SELECT count(*) FROM sor.handoffs) || ' hand-offs in flight'}),
		'0 conflicts, 0 hand-offs in flight', "$site: nothing set aside, nothing in flight");
	is($s->sql($site, q{
		SELECT string_agg(k || '=' || sor.owner_of('customer', k::text), ',' ORDER BY k)
		  FROM generate_series(1, 30) k}),
		join(',', map { "$_=$owner{$_}" } @keys), "$site agrees with the model on every owner");
}
my @dup = $s->log_lines($SorSites::DUPLICATE_OR_MISSING);
is(scalar(@dup), 0, 'no change was applied twice or missed a row (no pglogical conflicts)')
  or diag(join("\n", @dup[ 0 .. ($#dup < 9 ? $#dup : 9) ]));

$s->teardown;
diag(sprintf('random run: %d operations in %.1f s; %.1f s in all', $ops, $run_time, time - $t_start));
done_testing();
