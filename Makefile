# sor: system of record for PostgreSQL databases that span sites
#
#   make && make install          build and install (as root)
#   make installcheck             all tests, each suite on a temporary
#                                 instance (as a user that may run a server)

MODULE_big = sor
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))
PG_CPPFLAGS = -I$(srcdir)/include
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers $(if $(WERROR),-Werror)

EXTENSION = sor
DATA = sor--1.0.sql

REGRESS = install sites register ownership enforce partitions bypass privileges queue replication
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=$(srcdir)/test/postgresql.conf

ISOLATION = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=$(srcdir)/test/isolation --temp-instance=./tmp_check_iso --temp-config=$(srcdir)/test/postgresql.conf --temp-config=$(srcdir)/test/isolation/postgresql.conf

TAP_TESTS = 1
PROVE_TESTS = $(sort $(wildcard test/t/*.pl))

EXTRA_CLEAN = tmp_check tmp_check_iso output_iso results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
