//! What the serving engine runs its steps on: the real model, or the latency model of
//! `llmd worker --sim`. Everything else in the engine is the same for both.

use candle_core::Device;

use crate::config::ModelConfig;
use crate::model::Model;
use crate::sim::SimModel;

pub enum Backend {
    Model(Model),
    Sim(SimModel),
}

impl Backend {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Model(m) => m.config(),
            Self::Sim(s) => s.config(),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Self::Model(m) => m.device(),
            Self::Sim(s) => s.device(),
        }
    }
}

impl From<Model> for Backend {
    fn from(m: Model) -> Self {
        Self::Model(m)
    }
}

impl From<SimModel> for Backend {
    fn from(s: SimModel) -> Self {
        Self::Sim(s)
    }
}
