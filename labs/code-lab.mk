# The targets every code lab shares (labs 2-5); a lab's Makefile sets TOPO and RULES,
# then includes this file.
#
#   make run     the live lab, its router running your code (root: sudo make run)
#   make check   which TODO or checkpoint is still unmet, one line each
#   make stop    stop the live lab
#   make clean   stop it even if it crashed, and remove what the tests wrote
#   make test    grade your folder the way the instructor's grader does (into results/)
#
# SUB=solution uses the reference answer instead of student/.
NATTRACK ?= ../../.venv/bin/nattrack
SUB ?= student
LAB := $(CURDIR)

.PHONY: run check stop clean test conntrack

run:
	$(NATTRACK) lab up --topo $(TOPO) --rules $(RULES) --plugin $(LAB)=$(LAB)/$(SUB)

check:
	$(NATTRACK) lab check $(LAB) --dir $(SUB)

stop:
	$(NATTRACK) lab down

clean:
	-$(NATTRACK) lab down --force
	rm -rf results $(SUB)/__pycache__

test:
	$(NATTRACK) grade $(LAB) $(SUB) --out results

conntrack:
	$(NATTRACK) conntrack -L
