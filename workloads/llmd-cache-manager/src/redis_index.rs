//! The index in Redis or Valkey (`--index redis://HOST:PORT`), so several cache-manager units
//! share one view. Same keys and semantics as [`crate::Index`]; each event becomes a few
//! pipelined commands, each score one pipeline of reads.
//!
//! Layout (prefix `llmd:`): `k:<key>` hash worker → medium (`g`/`c`) of the workers holding
//! a block; `e:<worker>` hash engine hash → key; `lru` sorted set of keys by store time
//! (the bound: beyond `max_blocks` the oldest go, as in memory); `workers` hash worker →
//! model; `bs` hash model → block size; `stat:*` counters. An evicted key's stale entries
//! in `e:<worker>` are left (they resolve to a key no worker holds, which scores nothing)
//! and go when the worker is cleared.

use std::collections::HashMap;

use llmd_protocol::{block_hash, root_hash, BlockHash, KvEvent};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::index::{Medium, Scored};

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(#[from] redis::RedisError);

pub struct RedisIndex {
    conn: ConnectionManager,
    max_blocks: usize,
}

fn k(key: BlockHash) -> String {
    format!("llmd:k:{key}")
}

fn e(worker: &str) -> String {
    format!("llmd:e:{worker}")
}

fn medium_code(m: Medium) -> &'static str {
    match m {
        Medium::Gpu => "g",
        Medium::Cpu => "c",
    }
}

impl RedisIndex {
    pub async fn connect(url: &str, max_blocks: usize) -> Result<Self, RedisError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Self {
            conn,
            max_blocks: max_blocks.max(1),
        })
    }

    /// Removes `worker` from `keys`' holder sets, and drops keys left with none.
    async fn drop_holders(&self, worker: &str, keys: &[BlockHash]) -> Result<(), RedisError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        for &key in keys {
            p.hdel(k(key), worker).ignore();
        }
        for &key in keys {
            p.exists(k(key));
        }
        let alive: Vec<bool> = p.query_async(&mut c).await?;
        let gone: Vec<String> = keys
            .iter()
            .zip(alive)
            .filter(|(_, a)| !a)
            .map(|(key, _)| key.to_string())
            .collect();
        if !gone.is_empty() {
            let _: () = c.zrem("llmd:lru", gone).await?;
        }
        Ok(())
    }

    pub async fn apply(&self, worker: &str, model: &str, ev: &KvEvent) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        let model_known: Option<String> = c.hget("llmd:workers", worker).await?;
        if model_known.as_deref() != Some(model) {
            if model_known.is_some() {
                self.clear_worker(worker).await?;
            }
            let _: () = c.hset("llmd:workers", worker, model).await?;
        }
        match ev {
            KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
            } => {
                let bs = *block_size;
                if bs == 0 || token_ids.len() != block_hashes.len() * bs {
                    let _: () = c.incr("llmd:stat:malformed", 1).await?;
                    return Ok(());
                }
                let parent = match parent_block_hash {
                    None => Some(root_hash(
                        model,
                        lora_id.map(|i| format!("lora-{i}")).as_deref(),
                    )),
                    Some(p) => {
                        c.hget::<_, _, Option<u64>>(e(worker), p.to_string())
                            .await?
                    }
                };
                let Some(mut parent) = parent else {
                    let _: () = c.incr("llmd:stat:orphaned", block_hashes.len()).await?;
                    return Ok(());
                };
                let med = medium_code(Medium::parse(medium.as_deref()));
                let tick: i64 = c.incr("llmd:tick", block_hashes.len()).await?;
                let mut p = redis::pipe();
                p.hset("llmd:bs", model, bs).ignore();
                let first = tick - block_hashes.len() as i64 + 1;
                for (i, (engine, chunk)) in block_hashes
                    .iter()
                    .zip(token_ids.chunks_exact(bs))
                    .enumerate()
                {
                    let key = block_hash(parent, chunk);
                    parent = key;
                    p.hset(e(worker), engine.to_string(), key.to_string())
                        .ignore();
                    p.hset(k(key), worker, med).ignore();
                    p.zadd("llmd:lru", key.to_string(), first + i as i64)
                        .ignore();
                }
                p.zcard("llmd:lru");
                let (n,): (usize,) = p.query_async(&mut c).await?;
                if n > self.max_blocks {
                    let popped: Vec<(String, f64)> = c
                        .zpopmin("llmd:lru", (n - self.max_blocks) as isize)
                        .await?;
                    let mut p = redis::pipe();
                    for (key, _) in &popped {
                        p.del(format!("llmd:k:{key}")).ignore();
                    }
                    p.incr("llmd:stat:evicted", popped.len()).ignore();
                    let _: () = p.query_async(&mut c).await?;
                }
            }
            KvEvent::BlockRemoved { block_hashes, .. } => {
                if block_hashes.is_empty() {
                    return Ok(());
                }
                let fields: Vec<String> = block_hashes.iter().map(|h| h.to_string()).collect();
                let keys: Vec<Option<u64>> = redis::cmd("HMGET")
                    .arg(e(worker))
                    .arg(&fields)
                    .query_async(&mut c)
                    .await?;
                let _: () = c.hdel(e(worker), &fields).await?;
                let keys: Vec<BlockHash> = keys.into_iter().flatten().collect();
                self.drop_holders(worker, &keys).await?;
            }
            KvEvent::AllBlocksCleared => self.clear_worker(worker).await?,
        }
        Ok(())
    }

    pub async fn clear_worker(&self, worker: &str) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        let map: HashMap<String, u64> = c.hgetall(e(worker)).await?;
        let _: () = c.del(e(worker)).await?;
        let keys: Vec<BlockHash> = map.into_values().collect();
        self.drop_holders(worker, &keys).await
    }

    pub async fn remove_worker(&self, worker: &str) -> Result<(), RedisError> {
        self.clear_worker(worker).await?;
        let mut c = self.conn.clone();
        let _: () = c.hdel("llmd:workers", worker).await?;
        Ok(())
    }

    /// `(worker, model, blocks)` for every worker.
    pub async fn workers(&self) -> Result<Vec<(String, String, usize)>, RedisError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = c.hgetall("llmd:workers").await?;
        let mut p = redis::pipe();
        let names: Vec<(String, String)> = all.into_iter().collect();
        for (w, _) in &names {
            p.hlen(e(w));
        }
        let lens: Vec<usize> = p.query_async(&mut c).await?;
        Ok(names
            .into_iter()
            .zip(lens)
            .map(|((w, m), n)| (w, m, n))
            .collect())
    }

    /// Distinct keys held, and the evicted and orphaned counters.
    pub async fn summary(&self) -> Result<(usize, u64, u64), RedisError> {
        let mut c = self.conn.clone();
        let (n, ev, or): (usize, Option<u64>, Option<u64>) = redis::pipe()
            .zcard("llmd:lru")
            .get("llmd:stat:evicted")
            .get("llmd:stat:orphaned")
            .query_async(&mut c)
            .await?;
        Ok((n, ev.unwrap_or(0), or.unwrap_or(0)))
    }

    pub async fn block_size(&self, model: &str) -> Result<Option<usize>, RedisError> {
        let mut c = self.conn.clone();
        Ok(c.hget("llmd:bs", model).await?)
    }

    /// As [`crate::Index::score_keys`], from one pipeline of reads.
    pub async fn score_keys(
        &self,
        model: &str,
        keys: &[BlockHash],
        block_size: usize,
        only: Option<&[String]>,
    ) -> Result<Scored, RedisError> {
        let mut c = self.conn.clone();
        let workers: HashMap<String, String> = c.hgetall("llmd:workers").await?;
        let mut names: Vec<String> = workers
            .into_iter()
            .filter(|(w, m)| m == model && only.is_none_or(|o| o.contains(w)))
            .map(|(w, _)| w)
            .collect();
        names.sort();
        let holders: Vec<HashMap<String, String>> = if keys.is_empty() {
            Vec::new()
        } else {
            let mut p = redis::pipe();
            for &key in keys {
                p.hgetall(k(key));
            }
            p.query_async(&mut c).await?
        };
        let weight = |code: &str| {
            if code == "c" {
                Medium::Cpu.weight()
            } else {
                Medium::Gpu.weight()
            }
        };
        let total = keys.len();
        let out: Vec<(String, usize, f64)> = names
            .into_iter()
            .map(|w| {
                let (mut blocks, mut weighted) = (0usize, 0.0f64);
                for h in &holders {
                    match h.get(&w) {
                        Some(code) => {
                            blocks += 1;
                            weighted += weight(code);
                        }
                        None => break,
                    }
                }
                (w, blocks, weighted)
            })
            .collect();
        Ok(Scored::new(block_size, total, out))
    }
}
