"""The one path of every report: the reference filter, the dispatch, the scheduler and
its timerfd driver, clocks and latency windows."""
