"""EnvPool tasks (C++ MuJoCo v5 and Meta-World v3, stepped in threads) as a TorchRL env.

TorchRL's :class:`~torchrl.envs.MultiThreadedEnv` wraps EnvPool, but as shipped in
TorchRL 0.14 it converts specs through the legacy ``gym`` package, needs
``treevalue``, drops the step ``info`` (so Meta-World's ``success`` is lost) and
lets EnvPool auto-reset on the step after ``done``: that step ignores the action,
returns reward 0 and would put a fake transition (last observation -> first
observation) into the replay buffer. :class:`EnvPoolEnv` keeps TorchRL's class and
fixes those four points: gymnasium specs, no ``treevalue``, ``success`` read from
``info``, and explicit resets of the finished envs so that every step is a real one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, MultiThreadedEnv

SUCCESS_KEY = "success"  # the info key of tasks that report success, and our step output's key


class EnvPoolEnv(MultiThreadedEnv):
    """``num_workers`` copies of EnvPool task ``env_name``, batch size ``[num_workers]``.

    Args:
        num_workers: envs stepped together (EnvPool's ``num_envs``).
        env_name: an EnvPool task id, e.g. ``"HalfCheetah-v5"`` or ``"MetaWorld/Reach-v3"``.

    Keyword Args:
        create_env_kwargs: passed to ``envpool.make`` (``seed``, ``max_episode_steps``,
            ``num_threads``, ...). EnvPool seeds its envs ``seed, seed + 1, ...``.
        read_success: write the step info's ``success`` (bool, ``[num_workers, 1]``)
            into the step output; ``None`` (default): when the task reports it.
        **kwargs: :class:`~torchrl.envs.EnvBase` keyword arguments (``device``...).

    Observations are float32 (EnvPool's MuJoCo tasks return float64).
    """

    def __init__(
        self,
        num_workers: int,
        env_name: str,
        *,
        create_env_kwargs: dict[str, Any] | None = None,
        read_success: bool | None = None,
        **kwargs,
    ):
        self._read_success = read_success
        super().__init__(num_workers, env_name, create_env_kwargs=create_env_kwargs, **kwargs)

    def _build_env(self, env_name: str, num_workers: int, create_env_kwargs: dict | None):
        import envpool

        kwargs = dict(create_env_kwargs or {})
        return envpool.make(
            env_name,
            env_type="gymnasium",
            num_envs=num_workers,
            gym_reset_return_info=True,
            **kwargs,
        )

    def _make_specs(self, env) -> None:
        from torchrl.envs.libs.gym import _gym_to_torchrl_spec_transform, set_gym_backend

        batch = self.batch_size
        with set_gym_backend("gymnasium"):
            action = _gym_to_torchrl_spec_transform(env.spec.gymnasium_action_space)
            observation = _gym_to_torchrl_spec_transform(env.spec.gymnasium_observation_space)
        if isinstance(observation, Composite):
            raise NotImplementedError(
                f"EnvPoolEnv supports flat observations; {self.env_name} has {observation}"
            )
        obs_shape = (*batch, *observation.shape)
        observation_spec = Composite(
            observation=Unbounded(obs_shape, dtype=torch.float32, device=self.device),
            shape=batch,
            device=self.device,
        )
        if self._read_success is None:
            self._read_success = f"info:{SUCCESS_KEY}" in env._state_keys
        if self._read_success:
            observation_spec[SUCCESS_KEY] = Categorical(
                2, (*batch, 1), dtype=torch.bool, device=self.device
            )
        action = action.expand((*batch, *action.shape)).to(self.device)
        self.action_spec = action.to(torch.float32)  # the policy's dtype; EnvPool casts
        self.observation_spec = observation_spec
        self.reward_spec = Unbounded((*batch, 1), device=self.device)
        flag = Categorical(2, (*batch, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=flag, terminated=flag.clone(), truncated=flag.clone(), shape=batch
        )

    def _observation(self, obs: np.ndarray, info: dict, ids: np.ndarray | None) -> TensorDict:
        out = {"observation": torch.as_tensor(obs, dtype=torch.float32)}
        if self._read_success:
            success = torch.as_tensor(np.asarray(info[SUCCESS_KEY]) > 0)
            out[SUCCESS_KEY] = success.reshape(-1, 1)
        batch = self.batch_size if ids is None else torch.Size([len(ids)])
        return TensorDict(out, batch_size=batch)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None or bool(reset.all()):
            obs, info = self._env.reset()
            self.obs = self._observation(obs, info, None)
        else:
            ids = np.flatnonzero(reset.reshape(-1).cpu().numpy()).astype(np.int32)
            obs, info = self._env.reset(ids)
            # EnvPool answers in the order its threads finish: place rows by env_id.
            rows = torch.as_tensor(np.asarray(info["env_id"]), dtype=torch.long)
            self.obs[rows] = self._observation(obs, info, ids)
        out = self.obs.clone()
        out.update(self.full_done_spec.zero())
        return out.to(self.device)

    @torch.no_grad()
    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(self.action_key).to("cpu").numpy()
        obs, reward, terminated, truncated, info = self._env.step(action)
        rows = np.asarray(info["env_id"])
        if not np.array_equal(rows, np.arange(self.num_workers)):
            raise RuntimeError(f"EnvPool stepped envs {rows}; expected all of them in order")
        if np.any(np.asarray(info.get("elapsed_step", 1)) == 0):
            raise RuntimeError(
                "EnvPool auto-reset an env on this step (its action was ignored): "
                "envs must be reset explicitly after done"
            )
        self.obs = self._observation(obs, info, None)
        out = self.obs.clone()
        terminated = torch.as_tensor(terminated).reshape(-1, 1)
        truncated = torch.as_tensor(truncated).reshape(-1, 1)
        out.set("reward", torch.as_tensor(reward, dtype=torch.float32).reshape(-1, 1))
        out.set("terminated", terminated)
        out.set("truncated", truncated)
        out.set("done", terminated | truncated)
        return out.to(self.device)

    # EnvPool would reset finished envs on the next step, ignoring the action; reset them now.
    step_and_maybe_reset = EnvBase.step_and_maybe_reset

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:  # EnvPool takes seeds at construction only: rebuild it
            self.create_env_kwargs["seed"] = int(seed)
            self._env.close()
            self._env = self._build_env(self.env_name, self.num_workers, self.create_env_kwargs)
