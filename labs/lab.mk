# The targets every lab shares; a lab's Makefile defines its own `run` (and extras), then
# includes this file.
#
#   make check   which TODO or checkpoint is still unmet, one line each (LIVE=--live: live too, root)
#   make stop    stop the live lab
#   make clean   stop it even if it crashed, and remove what the tests wrote
#   make test    grade your folder the way the instructor's grader does (into results/)
#
# SUB=solution uses the reference answer instead of student/.
NATTRACK ?= ../../.venv/bin/nattrack
PYTHON ?= ../../.venv/bin/python
SUB ?= student
LIVE ?=
LAB := $(CURDIR)

.PHONY: check stop clean test

check:
	$(NATTRACK) lab check $(LAB) --dir $(SUB) $(LIVE)

stop:
	$(NATTRACK) lab down

clean:
	-$(NATTRACK) lab down --force
	rm -rf results $(SUB)/__pycache__

test:
	$(NATTRACK) grade $(LAB) $(SUB) --out results
