"""stepline's benchmark harness: ``python -m benchmarks`` (see docs/benchmarks.md).

It starts the scripted upstream, a tool server, stepline and a load generator
as separate processes on loopback, runs each scenario once through stepline
and once straight against the scripted model, and prints one table with both
figures, their difference or ratio, and the targets they meet or miss.

The modules are private machinery:

* ``_services``: starting, watching (CPU, resident memory) and stopping processes;
* ``_toolserver``: the HTTP tools the loop calls, answering at once;
* ``_http``: the load generator's minimal HTTP/1.1 client;
* ``_load``: the load generator process and its jobs;
* ``_stack``: one scenario's processes, stepline's config, the scripts, and
  running the load generator while reading every process's CPU time;
* ``_scenarios``: the scenarios and the rows they add to the table;
* ``_websocket`` and ``_websocket_client``: the 20-call client tool loop over
  a WebSocket against HTTP, and its client process;
* ``_memory_stepline``: stepline on its in-memory store (``--store memory``);
* ``_report``: percentiles, the table and the targets;
* ``_profile``: self time per function from py-spy's collapsed stacks.
"""
