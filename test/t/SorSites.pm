# SorSites: three PostgreSQL servers (paris, london, tokyo) that play sor
# sites and replicate with pglogical, for the TAP tests test/t/02*.pl.
#
#   my $s = SorSites->new;          start, create the tables, join, wait
#   $s->sql($site, $query)          run a query, die on error
#   $s->try($site, $query)          run a query, return { ok, out, sqlstate,
#                                   message, error }
#   $s->sync                        wait until every site has applied every
#                                   other site's changes (and acknowledged
#                                   the hand-offs among them)
#   $s->checksum($site)             row counts and md5 of both tables
#   $s->transfer($site, $key, $to)  sor.transfer of a customer, retried
#                                   while refused with SR001 or SR005
#   $s->pause($from, $to)           stop the stream from site $from at $to
#   $s->resume($from, $to)
#   $s->isolate($site), $s->reconnect($site)
#                                   pause or resume every stream from and
#                                   to $site
#   $s->restart($site, $mode)       restart a server ("immediate": crash)
#   $s->assert_identical($what)     every site holds the same rows and
#                                   ownership (Test::More assertions)
#   $s->session($site)              another psql session, for concurrent
#                                   work: SorSites->launch($session, $sql)
#                                   starts a query, ->collect($session)
#                                   waits for its result
#   $s->log_lines($regex)           matching lines of the servers' logs
#
# Each site also has the procedure write_when_owner() (see $HELPERS).
#
# Every site has the tables customer (key id) and orders (key customer_id),
# registered in domain "customer" with default site paris.  Queries run
# through one psql session per site (background_psql): VERBOSITY is verbose,
# so that errors carry their SQLSTATE.
package SorSites;

use strict;
use warnings;
use Carp;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @SITES = qw(paris london tokyo);

# Seconds to wait for replication before a test fails (not the 180 s of
# poll_query_until: a failing convergence check should fail soon).
our $WAIT = $ENV{SOR_TEST_WAIT} // 60;

# Local helpers (not registered, not replicated).
#
# write_when_owner(k, suffix, timeout): retry, every 1 ms, each try in a
# transaction of its own, to append suffix to the name of customer k until
# this site accepts it (SR001 and SR005 are retried; a missing row is
# retried too, it may be on its way).  Returns the name written, the number
# of orders of k seen in that transaction, the tries, refusals by SQLSTATE,
# the xid of the transaction that wrote and the time it wrote.
our $HELPERS = q{
CREATE PROCEDURE write_when_owner(k bigint, suffix text, timeout_s float8,
    INOUT got text DEFAULT NULL, INOUT orders_seen bigint DEFAULT NULL,
    INOUT tries int DEFAULT 0, INOUT sr001 int DEFAULT 0,
    INOUT sr005 int DEFAULT 0, INOUT xid text DEFAULT NULL,
    INOUT accepted_at timestamptz DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    n bigint;
BEGIN
    LOOP
        tries := tries + 1;
        BEGIN
            UPDATE customer SET name = name || suffix WHERE id = k
            RETURNING name INTO got;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 1 THEN
                SELECT count(*) INTO orders_seen FROM orders WHERE customer_id = k;
                xid := pg_current_xact_id()::xid::text;
                accepted_at := clock_timestamp();
            END IF;
        EXCEPTION
            WHEN SQLSTATE 'SR001' THEN sr001 := sr001 + 1;
            WHEN SQLSTATE 'SR005' THEN sr005 := sr005 + 1;
        END;
        EXIT WHEN accepted_at IS NOT NULL;
        IF clock_timestamp() > t0 + make_interval(secs => timeout_s) THEN
            RAISE EXCEPTION 'customer % not writable here after % s (% tries, % SR001, % SR005)',
                k, timeout_s, tries, sr001, sr005;
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.001);
    END LOOP;
END
$$;
};

sub new
{
	my ($class, %opts) = @_;
	my $self = bless {
		names => [@SITES],
		nodes => {},
		sessions => {},
		db => 'postgres',
		paused => {},
	}, $class;

	# pglogical's output plugin must be allowed explicitly since 15.19
	my $allow = '';
	my ($out) = run_command([ 'postgres', '--describe-config' ]);
	$allow = "output_plugin_libraries = 'pgoutput, test_decoding, pglogical_output'"
	  if $out =~ /^output_plugin_libraries\t/m;

	for my $name (@SITES)
	{
		my $node = PostgreSQL::Test::Cluster->new($name);
		$node->init;
		$node->append_conf('postgresql.conf', qq{
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_worker_processes = 16
shared_preload_libraries = 'pglogical, sor'
track_commit_timestamp = on
max_locks_per_transaction = 128
log_statement = none
$allow
} . ($opts{conf} // ''));
		$node->start;
		$self->{nodes}{$name} = $node;
	}

	for my $name (@SITES)
	{
		$self->sql($name, q{CREATE EXTENSION pglogical});
		$self->sql($name, q{CREATE EXTENSION sor});
		$self->sql($name, join('; ', map { "SELECT sor.add_site('$_')" } @SITES));
		$self->sql($name, qq{SELECT sor.set_local_site('$name')});
		$self->sql($name, q{
			CREATE TABLE customer (id bigint PRIMARY KEY, name text);
			CREATE TABLE orders (order_id bigint PRIMARY KEY,
			                     customer_id bigint NOT NULL,
			                     amount numeric);
			SELECT sor.register_table('customer', 'id', 'customer', 'paris');
			SELECT sor.register_table('orders', 'customer_id', 'customer', 'paris');
		});
	}
	for my $name (@SITES)
	{
		$self->sql($name, $HELPERS);
		$self->sql($name, "SELECT sor.create_node('" . $self->dsn($name) . "')");
	}
	for my $name (@SITES)
	{
		for my $other (grep { $_ ne $name } @SITES)
		{
			$self->sql($name,
				"SELECT sor.subscribe('$other', '" . $self->dsn($other) . "')");
		}
	}
	for my $name (@SITES)
	{
		$self->wait_for($name, q{
			SELECT count(*) FILTER (WHERE status = 'replicating') || '/' || count(*)
			  FROM pglogical.show_subscription_status()}, '2/2')
		  or BAIL_OUT("the subscriptions of $name do not replicate");
	}
	$self->sync;
	return $self;
}

sub node { my ($self, $name) = @_; return $self->{nodes}{$name}; }
sub names { my ($self) = @_; return @{ $self->{names} }; }

sub dsn
{
	my ($self, $name) = @_;
	my $node = $self->{nodes}{$name};
	return sprintf('host=%s port=%d dbname=%s', $node->host, $node->port,
		$self->{db});
}

# A new psql session at $name (for concurrent work): errors do not stop it.
sub session
{
	my ($self, $name) = @_;
	my $s = $self->{nodes}{$name}->background_psql($self->{db},
		on_error_stop => 0);
	$s->set_query_timer_restart;
	$s->query_safe('\set VERBOSITY verbose');
	return $s;
}

# The session that sql() and try() use at $name.
sub main_session
{
	my ($self, $name) = @_;
	$self->{sessions}{$name} //= $self->session($name);
	return $self->{sessions}{$name};
}

# Run $query in session $s: { ok, out, error, sqlstate, message }.
sub run_in
{
	my ($class, $s, $query) = @_;
	$s->{stderr} = '';
	my ($out) = $s->query($query);
	my $err = $s->{stderr};
	$s->{stderr} = '';
	my %r = (out => $out, error => $err, ok => 1);
	if ($err =~ /(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):\s+([^\n]*)/)
	{
		$r{ok} = 0;
		$r{sqlstate} = $1;
		$r{message} = $2;
	}
	elsif ($err =~ /ERROR|FATAL|PANIC|connection to server/)
	{
		$r{ok} = 0;
		$r{sqlstate} = '';
		$r{message} = $err;
	}
	return \%r;
}

sub try
{
	my ($self, $name, $query) = @_;
	return SorSites->run_in($self->main_session($name), $query);
}

sub sql
{
	my ($self, $name, $query) = @_;
	my $r = $self->try($name, $query);
	croak "query at $name failed: $r->{error}\nquery: $query" unless $r->{ok};
	return $r->{out};
}

# Poll $query at $name until it returns $expected (default 't'), at most
# $timeout (default $WAIT) seconds.  Returns true on success; on time-out
# prints the last answer and returns false.
sub wait_for
{
	my ($self, $name, $query, $expected, $timeout) = @_;
	$expected //= 't';
	$timeout //= $WAIT;
	my $deadline = time + $timeout;
	my $r;
	while (1)
	{
		$r = $self->try($name, $query);
		return 1 if $r->{ok} && $r->{out} eq $expected;
		last if time > $deadline;
		usleep(10_000);
	}
	diag("$name: waited $timeout s for\n$query\nto return '$expected'; last: '"
		  . ($r->{out} // '') . "' $r->{error}");
	return 0;
}

# Wait until every subscription has received and applied its provider's
# changes up to now: every pglogical slot has confirmed the provider's
# current WAL position.  All streams must be running.
sub wait_streams
{
	my ($self) = @_;
	my %lsn = map { $_ => $self->sql($_, 'SELECT pg_current_wal_lsn()') } @SITES;
	my $ok = 1;
	for my $name (@SITES)
	{
		$ok &&= $self->wait_for($name, qq{
			SELECT count(*) FILTER (WHERE confirmed_flush_lsn >= '$lsn{$name}') || '/' || count(*)
			  FROM pg_replication_slots WHERE plugin = 'pglogical_output'},
			(scalar(@SITES) - 1) . '/' . (scalar(@SITES) - 1));
	}
	return $ok;
}

# Wait until the sites have caught up with each other: the streams, then
# the acknowledgements that the hand-offs they brought caused (run by the
# sor workers as commands), then the streams once more.
sub sync
{
	my ($self) = @_;
	my $ok = $self->wait_streams;
	for my $name (@SITES)
	{
		$ok &&= $self->wait_for($name, 'SELECT count(*) FROM sor.command', '0');
	}
	$ok &&= $self->wait_streams;
	croak 'the sites did not catch up' unless $ok;
	return $ok;
}

# Counts and md5 of every row of both tables, in key order.
our $CHECKSUM = q{
	SELECT (SELECT count(*) FROM customer) || ' customers, '
	    || (SELECT count(*) FROM orders) || ' orders, '
	    || (SELECT md5(coalesce(string_agg(c::text, ';' ORDER BY id), '')) FROM customer c)
	    || ' '
	    || (SELECT md5(coalesce(string_agg(o::text, ';' ORDER BY order_id), '')) FROM orders o)};

sub checksum
{
	my ($self, $name) = @_;
	return $self->sql($name, $CHECKSUM);
}

# Ownership as this site sees it: entries and the domain's default owner.
our $OWNERSHIP = q{
	SELECT md5(coalesce(string_agg(domain || ':' || key || '=' || site || '@' || epoch, ';'
	                               ORDER BY domain, key), ''))
	    || ' ' || (SELECT string_agg(name || '=' || coalesce(default_site, '-') || '@' || default_epoch,
	                                 ';' ORDER BY name) FROM sor.domain)
	  FROM sor.owner_entry};

sub ownership
{
	my ($self, $name) = @_;
	return $self->sql($name, $OWNERSHIP);
}

# Assert that every site holds the same data (and the same ownership).
sub assert_identical
{
	my ($self, $what) = @_;
	my %sum = map { $_ => $self->checksum($_) } @SITES;
	my %own = map { $_ => $self->ownership($_) } @SITES;
	for my $name (@SITES[ 1 .. $#SITES ])
	{
		is($sum{$name}, $sum{ $SITES[0] },
			"$what: $name holds the same rows as $SITES[0]");
		is($own{$name}, $own{ $SITES[0] },
			"$what: $name sees the same ownership as $SITES[0]");
	}
	note "$what: $sum{$SITES[0]}";
	for my $name (@SITES)
	{
		my $c = $self->conflict_list($name);
		note "$what: set aside at $name:\n$c" if $c ne '';
	}
	return $sum{ $SITES[0] };
}

# Transfer customer $key at $site to $to, retrying while $site is not its
# owner yet (SR001: the hand-off to $site is on its way) or may not hand it
# on yet (SR005: not acknowledged).  Returns the refusals seen, by SQLSTATE.
sub transfer
{
	my ($self, $site, $key, $to, $timeout) = @_;
	my $deadline = time + ($timeout // $WAIT);
	my %refused;
	while (1)
	{
		my $r = $self->try($site, "SELECT sor.transfer('customer', '$key', '$to')");
		return \%refused if $r->{ok};
		croak "transfer of $key at $site failed: $r->{error}"
		  unless ($r->{sqlstate} // '') =~ /^SR00[15]$/;
		$refused{ $r->{sqlstate} }++;
		croak "transfer of $key at $site to $to still refused after the time-out: $r->{message}"
		  if time > $deadline;
		usleep(2_000);
	}
}

# The changes set aside at $site (sor.conflicts), one line each.
sub conflict_list
{
	my ($self, $site, $where) = @_;
	$where //= 'true';
	return $self->sql($site, qq{
		SELECT coalesce(string_agg(concat_ws(' ', id, noted_at, reason, 'from', origin_site,
		                                     'owner', owner_site, 'epoch', epoch, tbl, key,
		                                     operation, old_row, new_row), E'\n' ORDER BY id), '')
		  FROM sor.conflicts WHERE $where});
}

# Stop the stream of $from's changes to $to (at $to), and start it again.
sub pause
{
	my ($self, $from, $to) = @_;
	$self->sql($to, "SELECT pglogical.alter_subscription_disable('sor_${from}_to_$to', true)");
	$self->wait_for($to, qq{
		SELECT status FROM pglogical.show_subscription_status('sor_${from}_to_$to')}, 'disabled')
	  or croak "could not pause sor_${from}_to_$to";
	# the walsender at $from is gone too
	$self->wait_for($from, qq{
		SELECT count(*) FROM pg_stat_replication WHERE application_name = 'sor_${from}_to_$to'}, '0')
	  or croak "the walsender of sor_${from}_to_$to is still there";
	$self->{paused}{"$from>$to"} = 1;
	return;
}

sub resume
{
	my ($self, $from, $to) = @_;
	$self->sql($to, "SELECT pglogical.alter_subscription_enable('sor_${from}_to_$to', true)");
	$self->wait_for($to, qq{
		SELECT status FROM pglogical.show_subscription_status('sor_${from}_to_$to')}, 'replicating')
	  or croak "could not resume sor_${from}_to_$to";
	delete $self->{paused}{"$from>$to"};
	return;
}

sub isolate
{
	my ($self, $site) = @_;
	for my $other (grep { $_ ne $site } @SITES)
	{
		$self->pause($site, $other);
		$self->pause($other, $site);
	}
	return;
}

sub reconnect
{
	my ($self, $site) = @_;
	for my $other (grep { $_ ne $site } @SITES)
	{
		$self->resume($site, $other);
		$self->resume($other, $site);
	}
	return;
}

# Restart the server of site $name: "fast" (pg_ctl restart) or
# "immediate" (a crash: stop -m immediate, then start, with recovery).  Its
# sessions are opened again.  The other sites' apply workers for $name's
# stream stop with "data stream ended" when it goes; pglogical's manager
# starts them again only when something wakes it, else after up to 180 s,
# so they are restarted here (disable and enable, as an operator would).
sub restart
{
	my ($self, $name, $mode) = @_;
	my $s = delete $self->{sessions}{$name};
	eval { $s->quit if $s; };
	my $node = $self->{nodes}{$name};
	if (($mode // 'fast') eq 'immediate')
	{
		$node->stop('immediate');
		$node->start;
	}
	else
	{
		$node->restart;
	}
	for my $other (grep { $_ ne $name } @SITES)
	{
		next if $self->{paused}{"$name>$other"};
		$self->pause($name, $other);
		$self->resume($name, $other);
	}
	return;
}

# Start $query in session $s without waiting for it; collect() waits for
# it and returns what run_in() returns.
sub launch
{
	my ($class, $s, $query) = @_;
	$s->{stdout} = '';
	$s->{stderr} = '';
	$s->{stdin} .= "$query\n;\n\\echo __launched_done__\n\\warn __launched_done__\n";
	$s->{run}->pump_nb;
	return;
}

sub collect
{
	my ($class, $s) = @_;
	my $done = qr/__launched_done__\n/;
	$s->{timeout}->start;
	$s->{run}->pump
	  until ($s->{stdout} =~ $done && $s->{stderr} =~ $done)
	  || $s->{timeout}->is_expired;
	croak 'psql timed out' if $s->{timeout}->is_expired;
	my $out = $s->{stdout};
	my $err = $s->{stderr};
	$out =~ s/\n?__launched_done__\n//;
	$err =~ s/__launched_done__\n//;
	$s->{stdout} = '';
	$s->{stderr} = '';
	my %r = (out => $out, error => $err, ok => 1);
	if ($err =~ /(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):\s+([^\n]*)/)
	{
		@r{qw(ok sqlstate message)} = (0, $1, $2);
	}
	return \%r;
}

# pglogical's log line for a change of a registered table that met a row
# that was already there (an INSERT applied twice) or found no row (an
# UPDATE or DELETE before its INSERT).  pglogical also logs an UPDATE of a
# row last written by another origin ("remote UPDATE ... (local index
# ...)"): that is every write after a hand-off, not an error.
our $DUPLICATE_OR_MISSING = qr/CONFLICT: remote (?:INSERT on relation public\.|(?:UPDATE|DELETE) on relation public\.\S+ replica identity index .*\(tuple not found\))/;

# Lines of the server logs of all sites that match $re.
sub log_lines
{
	my ($self, $re) = @_;
	my @found;
	for my $name (@SITES)
	{
		my $log = slurp_file($self->{nodes}{$name}->logfile);
		push @found, map { "$name: $_" } grep { /$re/ } split /\n/, $log;
	}
	return @found;
}

sub teardown
{
	my ($self) = @_;
	for my $name (@SITES)
	{
		my $s = delete $self->{sessions}{$name};
		eval { $s->quit if $s; };
	}
	$self->{nodes}{$_}->stop for @SITES;
	return;
}

1;
