# Entry point on the device and in the simulator.
import app
import hal

try:
    app.main()
except Exception as exc:  # last resort: keep the traceback on flash, then start again
    app.crash_report(exc)
    hal.restart()
