# What the code labs (2-5) add to lab.mk; a lab's Makefile sets TOPO and RULES, then
# includes this file.
#
#   make run        the live lab, its router running your code (root: sudo make run)
#   make conntrack  the router's table, as conntrack -L prints it
.PHONY: run conntrack

run:
	$(NATTRACK) lab up --topo $(TOPO) --rules $(RULES) --plugin $(LAB)=$(LAB)/$(SUB)

conntrack:
	$(NATTRACK) conntrack -L

# check, stop, clean, test and the shared settings (after run: the default goal stays run)
include ../lab.mk
