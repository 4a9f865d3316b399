"""Ludii game synthesis (the paper's task 3): everything progrl needs around the Ludii engine.

- :mod:`progrl.ludii.sexpr`      s-expressions of ludemes: tokens, brackets, strings, spans
- :mod:`progrl.ludii.fim`        fill-in-the-middle examples, the paper's prompt form, trim, recompose
- :mod:`progrl.ludii.validator`  a pure-Python structural validator (a proxy, never the engine)
- :mod:`progrl.ludii.toolchain`  java / javac / the user's jar, and the worker compiled against it
- :mod:`progrl.ludii.pool`       a supervised pool of JSON-lines worker processes (hard timeouts)
- :mod:`progrl.ludii.engine`     the Ludii engine evaluator on that pool (the paper's preset, cache)
- :mod:`progrl.ludii.library`    game descriptions from the user's jar, a .lud folder or a FIM file
- :mod:`progrl.ludii.reward`     the paper's reward and the batched reward function for the engine

Ludii (code, jars, .lud files) is CC BY-NC-ND 4.0: progrl contains none of it. The user points
progrl at their own Ludii jar (``task_options.jar`` or ``LUDII_JAR``); the Java worker in
``java/`` is progrl's own code, compiled against that jar at first use.
"""
