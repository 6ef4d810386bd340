//! Command types known to a coordinator, by their stable `command_type`.
//!
//! A row names its type only by number; the registry turns that number back
//! into a typed [`CommandActor`], which is how a command is rebuilt after a
//! restart.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use actix::Supervisor;

use crate::command::{ChildExecution, Command};
use crate::command_actor::{ActorSetup, CommandActor, LiveAddr};
use crate::coordinator::Coordinator;
use crate::model::CommandEntity;

/// Builds the actor of one command type from a row.
pub(crate) trait Factory: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn serial(&self) -> bool;
    /// Deserializes the parameters and starts a supervised actor, or says why
    /// the row cannot become a command.
    fn spawn(
        &self,
        entity: Box<CommandEntity>,
        setup: ActorSetup,
        coordinator: Coordinator,
    ) -> Result<LiveAddr, String>;
}

struct TypedFactory<C>(PhantomData<fn() -> C>);

impl<C: Command> Factory for TypedFactory<C> {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<C>()
    }

    fn serial(&self) -> bool {
        C::CHILD_EXECUTION == ChildExecution::Serial
    }

    fn spawn(
        &self,
        entity: Box<CommandEntity>,
        setup: ActorSetup,
        coordinator: Coordinator,
    ) -> Result<LiveAddr, String> {
        let command: C = entity.parameters.decode().map_err(|e| {
            format!(
                "command_parameters do not deserialize as {}: {e}",
                std::any::type_name::<C>()
            )
        })?;
        let actor = CommandActor::new(command, entity, setup, coordinator);
        let addr = Supervisor::start(move |_| actor);
        Ok(Box::new(addr))
    }
}

/// The registered command types.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    factories: HashMap<i32, Arc<dyn Factory>>,
}

impl Registry {
    /// Registers `C`; an error names both types when the number is taken.
    pub(crate) fn register<C: Command>(&mut self) -> Result<(), String> {
        if let Some(existing) = self.factories.get(&C::COMMAND_TYPE) {
            if existing.type_name() == std::any::type_name::<C>() {
                return Ok(());
            }
            return Err(format!(
                "command type {} is registered twice: by {} and by {}",
                C::COMMAND_TYPE,
                existing.type_name(),
                std::any::type_name::<C>()
            ));
        }
        C::RETRY.validate().map_err(|e| {
            format!(
                "command type {} ({}): its retry policy: {e}",
                C::COMMAND_TYPE,
                std::any::type_name::<C>()
            )
        })?;
        self.factories
            .insert(C::COMMAND_TYPE, Arc::new(TypedFactory::<C>(PhantomData)));
        Ok(())
    }

    pub(crate) fn get(&self, command_type: i32) -> Option<&Arc<dyn Factory>> {
        self.factories.get(&command_type)
    }

    pub(crate) fn contains(&self, command_type: i32) -> bool {
        self.factories.contains_key(&command_type)
    }
}
