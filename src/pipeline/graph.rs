//! Stages to instances: matrix variants fanned out over their needs, as a petgraph DAG.
//!
//! A stage that needs a matrix stage gets one instance per upstream instance; several such needs
//! give their product, restricted to consistent combinations: two upstream instances that took
//! different values of the same axis (say `base`'s `seed`) are never combined, so `eval` over
//! `model = "extend"` and `data = "tokenize"` pairs seed 1 with seed 1. A gather (`x[*]`)
//! collects every consistent instance of `x`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use petgraph::graph::{DiGraph, NodeIndex};

use super::spec::{Coord, Pipeline, Select, Stage};
use crate::error::{Result, SpecError};

/// One node of the DAG: a stage with one matrix combination and one choice of upstream.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Index into `Pipeline::stages`.
    pub stage: usize,
    /// `extend@yarn,seed-1`, or just the stage name without a matrix.
    pub name: String,
    /// Matrix coordinates, inherited ones first.
    pub coords: Vec<Coord>,
    pub params: serde_json::Value,
    pub seed: u64,
    /// Need name -> upstream instance ids.
    pub needs: BTreeMap<String, Vec<usize>>,
}

impl Instance {
    /// Matrix values flattened to columns; a name taken by an earlier axis is prefixed with the
    /// axis' stage (`extend.seed`).
    pub fn matrix_columns(&self) -> Vec<(String, serde_json::Value)> {
        let mut out: Vec<(String, serde_json::Value)> = Vec::new();
        for c in &self.coords {
            for (k, v) in &c.values {
                let name = if out.iter().any(|(n, _)| n == k) {
                    format!("{}.{k}", c.origin)
                } else {
                    k.clone()
                };
                out.push((name, v.clone()));
            }
        }
        out
    }
}

/// The expanded pipeline.
pub struct Graph {
    pub instances: Vec<Instance>,
    /// Edges point from an upstream instance to the instance that needs it.
    pub dag: DiGraph<usize, ()>,
    pub nodes: Vec<NodeIndex>,
}

/// Coordinates so far and need name -> chosen upstream ids.
type Combo = (Vec<Coord>, BTreeMap<String, Vec<usize>>);

fn consistent(a: &[Coord], b: &[Coord]) -> bool {
    a.iter().all(|x| {
        b.iter()
            .all(|y| x.origin != y.origin || x.axis != y.axis || x.label == y.label)
    })
}

fn merge(into: &mut Vec<Coord>, from: &[Coord]) {
    for c in from {
        if !into
            .iter()
            .any(|x| x.origin == c.origin && x.axis == c.axis)
        {
            into.push(c.clone());
        }
    }
}

/// Expand every stage into instances (stages must be in topological order, as `spec` leaves them).
pub fn expand(p: &Pipeline) -> Result<Graph> {
    let mut instances: Vec<Instance> = Vec::new();
    let mut by_stage: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (si, stage) in p.stages.iter().enumerate() {
        let mut mine = Vec::new();
        // Choices for the fanning needs, as (coords so far, need -> ids).
        let mut combos: Vec<Combo> = vec![(Vec::new(), BTreeMap::new())];
        for need in stage.needs.iter().filter(|n| n.select != Select::Gather) {
            let candidates = &by_stage[need.stage.as_str()];
            let candidates: Vec<usize> = match &need.select {
                Select::Instance(suffix) => {
                    let full = format!("{}@{suffix}", need.stage);
                    let found: Vec<usize> = candidates
                        .iter()
                        .copied()
                        .filter(|&i| instances[i].name == full)
                        .collect();
                    if found.is_empty() {
                        let names: Vec<&str> = candidates
                            .iter()
                            .map(|&i| instances[i].name.as_str())
                            .collect();
                        return Err(SpecError {
                            location: need.location.clone(),
                            message: format!(
                                "need `{}` names no instance `{full}` (instances: {})",
                                need.name,
                                names.join(", ")
                            ),
                        }
                        .into());
                    }
                    found
                }
                _ => candidates.clone(),
            };
            // A pinned instance (`x@name`) is a fixed input, like a baseline: it neither
            // constrains nor names the fan-out.
            let pinned = matches!(need.select, Select::Instance(_));
            let mut next = Vec::new();
            for (coords, chosen) in &combos {
                for &c in &candidates {
                    if pinned || consistent(coords, &instances[c].coords) {
                        let mut coords = coords.clone();
                        if !pinned {
                            merge(&mut coords, &instances[c].coords);
                        }
                        let mut chosen = chosen.clone();
                        chosen.insert(need.name.clone(), vec![c]);
                        next.push((coords, chosen));
                    }
                }
            }
            combos = next;
        }
        for (coords, chosen) in &combos {
            for variant in &stage.variants {
                let mut coords = coords.clone();
                let mut chosen = chosen.clone();
                merge(&mut coords, &variant.coords);
                for need in stage.needs.iter().filter(|n| n.select == Select::Gather) {
                    let all: Vec<usize> = by_stage[need.stage.as_str()]
                        .iter()
                        .copied()
                        .filter(|&i| consistent(&coords, &instances[i].coords))
                        .collect();
                    chosen.insert(need.name.clone(), all);
                }
                let seed = variant
                    .seed
                    .or_else(|| {
                        coords
                            .iter()
                            .find(|c| c.axis == "seed")
                            .and_then(|c| c.values.first())
                            .and_then(|(_, v)| v.as_u64())
                    })
                    .unwrap_or(p.header.seed);
                let name = instance_name(stage, &coords);
                mine.push(instances.len());
                instances.push(Instance {
                    stage: si,
                    name,
                    coords,
                    params: variant.params.clone(),
                    seed,
                    needs: chosen,
                });
            }
        }
        if mine.is_empty() {
            return Err(SpecError {
                location: stage.location.clone(),
                message: format!(
                    "stage `{}` has no instance: no consistent combination of its needs",
                    stage.name
                ),
            }
            .into());
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in &mine {
            if seen.insert(instances[i].name.as_str(), i).is_some() {
                return Err(SpecError {
                    location: stage.location.clone(),
                    message: format!(
                        "duplicate instance name `{}`: two matrix or fan-out combinations get the same name (give matrix entries a distinct `name`)",
                        instances[i].name
                    ),
                }
                .into());
            }
        }
        by_stage.insert(stage.name.as_str(), mine);
    }
    let mut dag = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..instances.len()).map(|i| dag.add_node(i)).collect();
    for (i, inst) in instances.iter().enumerate() {
        for ups in inst.needs.values() {
            for &u in ups {
                dag.update_edge(nodes[u], nodes[i], ());
            }
        }
    }
    Ok(Graph {
        instances,
        dag,
        nodes,
    })
}

fn instance_name(stage: &Stage, coords: &[Coord]) -> String {
    if coords.is_empty() {
        return stage.name.clone();
    }
    let labels: Vec<&str> = coords.iter().map(|c| c.label.as_str()).collect();
    format!("{}@{}", stage.name, labels.join(","))
}

/// Output formats of `pipe dag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

impl Graph {
    /// Ids of `i`'s upstream instances, deduplicated, in need order.
    pub fn upstream(&self, i: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self.instances[i]
            .needs
            .values()
            .flatten()
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Render the instance DAG.
    pub fn render(&self, p: &Pipeline, format: DagFormat) -> String {
        let mut out = String::new();
        let kind = |i: usize| p.stages[self.instances[i].stage].kind.kind();
        match format {
            DagFormat::Text => {
                for (i, inst) in self.instances.iter().enumerate() {
                    let _ = write!(out, "{} ({})", inst.name, kind(i));
                    if !inst.needs.is_empty() {
                        let needs: Vec<String> = inst
                            .needs
                            .iter()
                            .map(|(n, ups)| {
                                let names: Vec<&str> = ups
                                    .iter()
                                    .map(|&u| self.instances[u].name.as_str())
                                    .collect();
                                format!("{n} = {}", names.join(" + "))
                            })
                            .collect();
                        let _ = write!(out, " <- {}", needs.join(", "));
                    }
                    out.push('\n');
                }
            }
            DagFormat::Dot => {
                let _ = writeln!(out, "digraph \"{}\" {{\n  rankdir=LR;", p.header.name);
                for (i, inst) in self.instances.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  n{i} [label=\"{}\\n({})\", shape=box];",
                        inst.name.replace('"', "\\\""),
                        kind(i)
                    );
                }
                for (i, inst) in self.instances.iter().enumerate() {
                    for (n, ups) in &inst.needs {
                        for u in ups {
                            let _ = writeln!(out, "  n{u} -> n{i} [label=\"{n}\"];");
                        }
                    }
                }
                out.push_str("}\n");
            }
            DagFormat::Mermaid => {
                out.push_str("flowchart LR\n");
                for (i, inst) in self.instances.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  n{i}[\"{}<br/>({})\"]",
                        inst.name.replace('"', "#quot;"),
                        kind(i)
                    );
                }
                for (i, inst) in self.instances.iter().enumerate() {
                    for (n, ups) in &inst.needs {
                        for u in ups {
                            let _ = writeln!(out, "  n{u} -->|{n}| n{i}");
                        }
                    }
                }
            }
        }
        out
    }
}
