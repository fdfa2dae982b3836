# Deep sleep on the ESP32 (hal/deepsleep.py picks it): machine.deepsleep, and the wake reason read at boot.
import esp32
import machine
from hal import esp32 as board


def deepsleep(ms):
    # The relay pin is held at off through the sleep (a floating pin would switch a low-trigger module on);
    # a press of the button wakes the chip early (ext0, active low). The RTC keeps the time meanwhile.
    if board._relay is not None:
        board._relay.value(1 if board._relay_low else 0)
        board._relay.init(hold=True)
    try:
        esp32.gpio_deep_sleep_hold(True)
    except AttributeError:
        pass
    if board._button is not None:
        esp32.wake_on_ext0(pin=board._button, level=esp32.WAKEUP_ALL_LOW)
    machine.deepsleep(int(ms))


def wake_reason():
    """Why the chip left its deep sleep: timer, button or unknown."""
    w = machine.wake_reason()
    return "timer" if w == machine.TIMER_WAKE else ("button" if w == machine.EXT0_WAKE else "unknown")
