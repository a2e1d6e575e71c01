"""The projector's former path: the actor shell is es_actors.read.projector_actor, its logic
es_actors.read.runner. Kept so ``from es_actors.read.projector import ProjectorActor,
start_projector`` goes on working."""

from es_actors.read.projector_actor import ProjectorActor, start_projector

__all__ = ["ProjectorActor", "start_projector"]
