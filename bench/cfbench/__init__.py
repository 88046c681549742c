"""The code of bench/run (the command; see `bench/run --help`), by concern:

  cli         --help, the options, main: setup, then the throughput and/or instruction runs
  common      paths, team/audience, Fail, log, the report's warnings, number formatting
  scenarios   the scenarios and targets, as data, and the nginx configurations they need
  deps        packages (scripts/deps.sh), the verifier's venv, the vendored nginx binary
  tokens      the token pool cached in target/bench-tokens/
  procs       background processes (all stopped on exit), waiting for HTTP, a keep-alive
              client
  system      /proc readings (CPU time, steal, memory) and the CPUs' idle state
  wrk         one wrk run of a scenario, and wrk's output
  throughput  the throughput run: rounds, openssl speed, the core alone, the first request
              of a session (cf_access_identity)
  perf        --perf: where the worker's CPU goes
  memory      the worker's memory as distinct tokens fill the cache (--rss-tokens)
  callgrind   --instructions: nginx and the core under callgrind
  report      the Markdown reports, printed and saved in target/bench-results/
"""
