"""The grader's tests: fixture lab, hidden tests and hostile submissions are data, not tests."""
collect_ignore_glob = ["fixture-lab/*", "hidden-fixture/*", "hostile/*"]
