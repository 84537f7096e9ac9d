"""A simulated EPICS motor record (caproto's ``motor`` record fields, with behaviour).

Enough of the motor record for ophyd's ``EpicsMotor`` and ophyd-async's ``Motor``:

- a put to ``VAL`` moves at ``VELO`` (clamped to ``VMAX``); ``DMOV`` goes 0 and ``MOVN`` 1
  for the move (``DMOV`` pulses also for a null move, as the record does) and the put
  completes when the move is done, so put-completion waits for the motion;
- ``RBV``/``DRBV``/``RRBV`` follow the motion; user = dial (``DIR`` Pos/Neg) + ``OFF``;
- soft limits ``HLM``/``LLM`` (user) and ``DHLM``/``DLLM`` (dial) are kept consistent and
  are ``VAL``'s control limits; a target outside them is refused (``LVIO`` = 1, nothing
  moves, the put completes at once);
- ``STOP`` = 1 (or ``SPMG`` Stop/Pause) stops at the current position;
- ``SET`` = Set with ``FOFF`` Variable redefines the user position (``OFF``) without moving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from caproto.server import PVGroup, PvpropertyDouble, pvproperty

__all__ = ["MotorRecord", "MotorValue"]

log = logging.getLogger(__name__)

TICK_S = 0.02


class MotorValue(PvpropertyDouble):
    """``VAL`` of a motor record.

    The record checks its soft limits itself (``LVIO``), so caproto's control-limit check
    must not refuse the put first.
    """

    async def verify_value(self, value: Any) -> Any:
        """Pass the value to the putter without caproto's limit check."""
        if self.putter is not None:
            return await self.putter(self, value)
        return value


class MotorRecord(PVGroup):
    """One motor record, PV ``<prefix><name>`` with its fields (``.VAL``, ``.RBV``, ...).

    Parameters
    ----------
    units, velocity, max_velocity, acceleration_s, limits, precision, resolution
        Initial ``EGU``, ``VELO``, ``VMAX``, ``ACCL``, (``LLM``, ``HLM``), ``PREC``, ``MRES``.
    position
        Initial dial position.
    """

    motor = pvproperty(value=0.0, name="", record="motor", dtype=MotorValue, precision=3,
                       doc="motor record (put VAL to move)")

    def __init__(self, *args: Any, units: str = "", velocity: float = 1.0,
                 max_velocity: float = 10.0, acceleration_s: float = 0.1,
                 limits: tuple[float, float] = (0.0, 10.0), precision: int = 3,
                 resolution: float = 0.001, position: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings = dict(units=units, velocity=velocity, max_velocity=max_velocity,
                              acceleration_s=acceleration_s, limits=limits,
                              precision=precision, resolution=resolution, position=position)
        self._move: asyncio.Task | None = None

    @property
    def fields(self) -> Any:
        """The record's field group (caproto ``MotorFields``)."""
        return self.motor.field_inst

    @property
    def dial_position(self) -> float:
        """Where the axis physically is (dial coordinate)."""
        return float(self.fields.dial_readback_value.value)

    def _sign(self) -> float:
        return -1.0 if str(self.fields.user_direction.value) == "Neg" else 1.0

    def _to_user(self, dial: float) -> float:
        return self._sign() * dial + float(self.fields.user_offset.value)

    def _to_dial(self, user: float) -> float:
        return (user - float(self.fields.user_offset.value)) * self._sign()

    async def initialize(self) -> None:
        """Write the initial field values (run once at IOC start)."""
        s, f = self._settings, self.fields
        await f.engineering_units.write(s["units"])
        await f.display_precision.write(s["precision"])
        await f.max_velocity.write(s["max_velocity"])
        await f.velocity.write(s["velocity"])
        await f.base_velocity.write(0.0)
        await f.seconds_to_velocity.write(s["acceleration_s"])
        await f.motor_step_size.write(s["resolution"])
        await f.encoder_step_size.write(s["resolution"])
        await f.retry_deadband.write(s["resolution"])
        await f.egu_s_per_revolution.write(s["resolution"] * 200)
        await f.output_specification.write("sim")
        lo, hi = s["limits"]
        await f.dial_low_limit.write(lo)
        await f.dial_high_limit.write(hi)
        await self._user_limits_from_dial()
        await self._set_readback(float(s["position"]))
        await self.motor.write(self._to_user(float(s["position"])), verify_value=False)
        await f.done_moving_to_value.write(1)
        await f.motor_is_moving.write(0)

    async def _user_limits_from_dial(self) -> None:
        f = self.fields
        a = self._to_user(float(f.dial_low_limit.value))
        b = self._to_user(float(f.dial_high_limit.value))
        lo, hi = min(a, b), max(a, b)
        await f.user_low_limit.write(lo, verify_value=False)
        await f.user_high_limit.write(hi, verify_value=False)
        await self.motor.write_metadata(lower_ctrl_limit=lo, upper_ctrl_limit=hi)

    async def _set_readback(self, dial: float) -> None:
        f = self.fields
        await f.dial_readback_value.write(dial)
        await f.user_readback_value.write(self._to_user(dial))
        res = float(f.motor_step_size.value) or 1.0
        await f.raw_readback_value.write(int(round(dial / res)))

    # -- VAL: move (the put completes when the move is done) ---------------------------------
    @motor.putter
    async def motor(self, instance: Any, value: float) -> float:  # noqa: F811
        """Move to ``value`` (or redefine the position with SET = Set); done when the move is."""
        f = self.fields
        target = float(value)
        if str(f.set_use_switch.value) == "Set":
            return await self._redefine(target)
        lo, hi = float(f.user_low_limit.value), float(f.user_high_limit.value)
        if (lo, hi) != (0.0, 0.0) and not lo <= target <= hi:
            log.warning("%s: move to %g refused: outside the limits [%g, %g]", instance.pvname,
                        target, lo, hi)
            await f.limit_violation.write(1)
            return float(instance.value)
        await f.limit_violation.write(0)
        if str(f.stop_pause_move_go.value) in ("Stop", "Pause"):
            log.warning("%s: move refused: SPMG is %s", instance.pvname,
                        f.stop_pause_move_go.value)
            return float(instance.value)
        if self._move is not None and not self._move.done():
            self._move.cancel()
            await asyncio.wait([self._move])
        await instance.write(target, verify_value=False)  # VAL reads the target at once
        self._move = asyncio.get_running_loop().create_task(self._run(self._to_dial(target)))
        try:
            await asyncio.shield(self._move)
        except asyncio.CancelledError:
            if not self._move.cancelled():
                raise
        return float(instance.value)

    async def _run(self, dial_target: float) -> None:
        f = self.fields
        await f.done_moving_to_value.write(0)
        await f.motor_is_moving.write(1)
        pos = self.dial_position
        await f.direction_of_travel.write(1 if dial_target >= pos else 0)
        try:
            while abs(dial_target - pos) > 1e-12:
                step = max(min(float(f.velocity.value), float(f.max_velocity.value) or 1e9),
                           1e-3) * TICK_S
                pos = dial_target if abs(dial_target - pos) <= step else (
                    pos + step if dial_target > pos else pos - step)
                await asyncio.sleep(TICK_S)
                await self._set_readback(pos)
            await self._set_readback(dial_target)  # arrived: exactly there, no rounding left
            await asyncio.sleep(TICK_S)  # the record always pulses DMOV, even for a null move
        except asyncio.CancelledError:
            await self.motor.write(self._to_user(self.dial_position), verify_value=False)
            raise
        finally:
            await f.motor_is_moving.write(0)
            await f.done_moving_to_value.write(1)

    async def _redefine(self, user: float) -> float:
        f = self.fields
        if str(f.offset_freeze_switch.value) == "Frozen":
            log.error("%s: SET with FOFF Frozen would redefine the controller position, which "
                      "the simulation does not do; refused", self.motor.pvname)
            return float(self.motor.value)
        offset = user - self._sign() * self.dial_position
        await f.user_offset.write(offset, verify_value=False)
        await self._user_limits_from_dial()
        await self._set_readback(self.dial_position)
        return user

    async def stop(self) -> None:
        """Stop a move at the current position."""
        if self._move is not None and not self._move.done():
            self._move.cancel()
            await asyncio.wait([self._move])

    # -- fields with behaviour -------------------------------------------------------------
    @motor.fields.stop.putter
    async def motor(fields: Any, instance: Any, value: int) -> int:  # noqa: F811
        """STOP: stop a move in progress."""
        if value:
            await fields.parent.group.stop()
        return 0

    @motor.fields.stop_pause_move_go.putter
    async def motor(fields: Any, instance: Any, value: str) -> str:  # noqa: F811
        """SPMG: Stop or Pause stops a move in progress."""
        if value in ("Stop", "Pause"):
            await fields.parent.group.stop()
        return value

    async def _user_limit(self, which: str, value: float) -> None:
        """Set a user limit through the dial limit it maps to (DIR decides which)."""
        f = self.fields
        high = (which == "high") == (self._sign() > 0)
        dial_field = f.dial_high_limit if high else f.dial_low_limit
        await dial_field.write(self._to_dial(value), verify_value=False)
        await self._user_limits_from_dial()

    @motor.fields.user_high_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:  # noqa: F811
        """HLM: set the user high limit through the dial limit it maps to."""
        await fields.parent.group._user_limit("high", float(value))
        return float(fields.user_high_limit.value)

    @motor.fields.user_low_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:  # noqa: F811
        """LLM: set the user low limit through the dial limit it maps to."""
        await fields.parent.group._user_limit("low", float(value))
        return float(fields.user_low_limit.value)

    @motor.fields.dial_high_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:  # noqa: F811
        """DHLM: set the dial high limit and update the user limits."""
        await instance.write(value, verify_value=False)
        await fields.parent.group._user_limits_from_dial()
        return value

    @motor.fields.dial_low_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:  # noqa: F811
        """DLLM: set the dial low limit and update the user limits."""
        await instance.write(value, verify_value=False)
        await fields.parent.group._user_limits_from_dial()
        return value

    @motor.fields.user_offset.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:  # noqa: F811
        """OFF: change the user offset; the motor stays put, user values shift."""
        group: MotorRecord = fields.parent.group
        dial_target = group._to_dial(float(group.motor.value))
        await instance.write(float(value), verify_value=False)
        await group._user_limits_from_dial()
        await group._set_readback(group.dial_position)
        await group.motor.write(group._to_user(dial_target), verify_value=False)
        return float(value)

    @motor.fields.velocity.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:  # noqa: F811
        """VELO: set the speed, capped at VMAX; a speed <= 0 is refused."""
        vmax = float(fields.max_velocity.value)
        v = min(float(value), vmax) if vmax > 0 else float(value)
        if v <= 0:
            log.warning("%s: VELO %g refused (must be > 0)", instance.pvname, value)
            return float(instance.value)
        return v
