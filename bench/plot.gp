# bench/plot.gp: the benchmark's plots (gnuplot -e "dir='...'" plot.gp),
# from the .dat files that bench/report.sh exports into dir.

set terminal pngcairo size 1000,560 font "sans,10"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key outside right top
set datafile separator "\t"
set xtics rotate by -20 noenhanced
set yrange [0:*]
set format y "%.1s%c"

set output dir."/enforce_row.png"
set title "Enforcement: single-row writes (pgbench, 2 clients, median TPS)"
set ylabel "transactions/s"
plot dir."/enforce_row.dat" using 2:xtic(1) title "unregistered", \
     "" using 3 title "sor", "" using 4 title "PL/pgSQL trigger", "" using 5 title "RLS", \
     "" using 6 title "no-op C trigger"

set output dir."/enforce_bulk.png"
set title "Enforcement: bulk INSERT ... SELECT and COPY (median rows/s; no COPY under RLS)"
set ylabel "rows/s"
plot dir."/enforce_bulk.dat" using 2:xtic(1) title "unregistered", \
     "" using 3 title "sor", "" using 4 title "PL/pgSQL trigger", "" using 5 title "RLS", \
     "" using 6 title "no-op C trigger"

set output dir."/drain.png"
set title "Queue: drain of a full queue, 2 workers vs 2 plain-SQL consumers (median)"
set ylabel "commands/s (log scale)"
set xlabel "groups"
set logscale y
set yrange [100:*]
set xtics norotate
plot dir."/drain.dat" using 2:xtic(1) title "sor", "" using 3 title "plain SQL, 2 consumers", \
     "" using 4 title "plain SQL, 1 consumer (1 commit per command)"

set output dir."/latency.png"
set title "Queue: commit of an enqueue to the start of its handler (upper bound)"
set style data lines
set xlabel "latency (ms, log scale)"
set ylabel "fraction of commands"
set logscale x
unset logscale y
set yrange [0:1.02]
set format y "%.1f"
set key bottom right
stats dir."/latency_idle.dat" using 1 name "idle" nooutput
stats dir."/latency_load.dat" using 1 name "load" nooutput
plot dir."/latency_idle.dat" using 1:(($0 + 1) / idle_records) with lines lw 2 title "idle queue", \
     dir."/latency_load.dat" using 1:(($0 + 1) / load_records) with lines lw 2 title "under ~1,000 commands/s"
