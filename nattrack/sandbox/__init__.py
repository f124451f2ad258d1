"""What confines code the kit runs for someone else, below every package that runs it:
the seccomp filter (:mod:`.seccomp`) the grader's worker and the python-mode router's
plugin child install on themselves before they import a student's code."""
