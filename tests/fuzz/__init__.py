"""A fuzzing harness over every entry point (launch and its dry run, prepare, evaluate,
predict, plot, summary): hostile inputs of each class (inputs.py), run as the real
commands and checked for the properties every case must keep (runner.py); the tests
and their profiles are in suite.py. The fast profile runs in the test suite
(tests/test_fuzz_entry_points.py); the long one is a script:

  python -m tests.fuzz --profile=long
"""
