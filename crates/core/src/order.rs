//! The order in which a batch of row changes is applied: parents before children, so rows take
//! their sequence numbers, and reach other devices, parents first. (Whether a foreign key holds
//! does not depend on it: the server checks them against the state the whole batch leaves.)
//!
//! Upserts go first, table by table in foreign-key dependency order; within a self-referencing
//! table, a row goes after the row it references when both are in the batch. Tombstones follow,
//! children's tables first. Changes that name no known table come last (they are rejected).

use std::collections::HashMap;

use ferry_proto::RowChange;

use crate::schema::{Schema, Table};

/// Indices into `changes`, in the order they should be applied.
pub fn apply_order(schema: &Schema, changes: &[RowChange]) -> Vec<usize> {
    let mut rank = vec![0_usize; schema.tables.len()];
    for (position, table) in schema.dependency_order().into_iter().enumerate() {
        rank[table] = position;
    }
    let mut upserts: Vec<(usize, usize)> = Vec::new(); // (table, change)
    let mut deletes: Vec<(usize, usize)> = Vec::new();
    let mut unknown = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        match schema.table_index(&change.table) {
            Some(t) if change.deleted => deletes.push((t, i)),
            Some(t) => upserts.push((t, i)),
            None => unknown.push(i),
        }
    }
    upserts.sort_by_key(|&(t, _)| rank[t]); // Stable: request order within a table.
    deletes.sort_by_key(|&(t, _)| std::cmp::Reverse(rank[t]));

    let mut out = Vec::with_capacity(changes.len());
    for group in upserts.chunk_by(|a, b| a.0 == b.0) {
        let table = &schema.tables[group[0].0];
        let members: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
        if has_self_reference(table) {
            out.extend(parents_first(table, changes, &members));
        } else {
            out.extend(members);
        }
    }
    out.extend(deletes.into_iter().map(|(_, i)| i));
    out.extend(unknown);
    out
}

fn has_self_reference(table: &Table) -> bool {
    table.foreign_keys.iter().any(|fk| fk.parent == table.name)
}

/// Orders rows of one self-referencing table so each comes after its in-batch parent. Rows whose
/// key cannot be computed keep their place; a reference cycle is cut where it is found.
fn parents_first(table: &Table, changes: &[RowChange], members: &[usize]) -> Vec<usize> {
    let keys: Vec<Option<String>> = members
        .iter()
        .map(|&i| table.key_of(&changes[i].pk).ok())
        .collect();
    let by_key: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .filter_map(|(slot, k)| k.as_deref().map(|k| (k, slot)))
        .collect();
    let parents: Vec<Vec<usize>> = members
        .iter()
        .map(|&i| {
            let Some(data) = changes[i].data.as_ref() else {
                return Vec::new();
            };
            table
                .foreign_keys
                .iter()
                .filter(|fk| fk.parent == table.name)
                .filter_map(|fk| table.parent_key_of(fk, table, data).ok().flatten())
                .filter_map(|k| by_key.get(k.as_str()).copied())
                .collect()
        })
        .collect();

    let mut state = vec![0_u8; members.len()]; // 0 new, 1 on the stack, 2 emitted
    let mut out = Vec::with_capacity(members.len());
    for start in 0..members.len() {
        // Iterative depth-first search: deep parent chains must not overflow the stack.
        let mut stack = vec![(start, 0_usize)];
        while let Some(&mut (slot, ref mut next)) = stack.last_mut() {
            if *next == 0 && state[slot] != 0 {
                stack.pop();
                continue;
            }
            state[slot] = 1;
            if let Some(&parent) = parents[slot].get(*next) {
                *next += 1;
                if state[parent] == 0 {
                    stack.push((parent, 0));
                }
                continue;
            }
            state[slot] = 2;
            out.push(members[slot]);
            stack.pop();
        }
    }
    out
}

/// The strongly connected components of a directed graph given by each node's successors:
/// groups of nodes that each reach every other one of the group (a node on no cycle is a group
/// of its own). Rows whose references form a cycle are such a group, and can only be stored
/// together. Tarjan's algorithm, without recursion: deep chains must not overflow the stack.
/// Successors outside `0..successors.len()` are a bug of the caller and panic.
pub fn strongly_connected(successors: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let nodes = successors.len();
    let mut index = vec![UNSEEN; nodes]; // The order in which the search reached each node.
    let mut low = vec![0_usize; nodes]; // The lowest index reachable from its subtree.
    let mut on_stack = vec![false; nodes];
    let mut stack = Vec::new();
    let mut components = Vec::new();
    let mut reached = 0;
    // The search path: each node with its next successor to look at.
    let mut path: Vec<(usize, usize)> = Vec::new();
    for root in 0..nodes {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = reached;
        low[root] = reached;
        reached += 1;
        stack.push(root);
        on_stack[root] = true;
        path.push((root, 0));
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&successor) = successors[node].get(*next) {
                *next += 1;
                if index[successor] == UNSEEN {
                    index[successor] = reached;
                    low[successor] = reached;
                    reached += 1;
                    stack.push(successor);
                    on_stack[successor] = true;
                    path.push((successor, 0));
                } else if on_stack[successor] {
                    low[node] = low[node].min(index[successor]);
                }
                continue;
            }
            path.pop();
            if let Some(&(parent, _)) = path.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == index[node] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Affinity, Column, ForeignKey};
    use serde_json::{Value, json};

    fn table(name: &str, fks: &[(&str, &str)]) -> Table {
        let col = |n: &str| Column {
            name: n.into(),
            decl_type: "TEXT".into(),
            affinity: Affinity::Text,
            not_null: false,
            default: None,
        };
        Table {
            name: name.into(),
            columns: vec![col("id"), col("parent_id"), col("sale_id")],
            primary_key: vec!["id".into()],
            foreign_keys: fks
                .iter()
                .map(|(c, p)| ForeignKey {
                    columns: vec![c.to_string()],
                    parent: p.to_string(),
                    parent_columns: vec!["id".into()],
                })
                .collect(),
            sql: None,
        }
    }

    fn change(table: &str, id: &str, data: Value, deleted: bool) -> RowChange {
        RowChange {
            table: table.into(),
            pk: json!({ "id": id }).as_object().unwrap().clone(),
            version: "v".into(),
            deleted,
            data: if deleted {
                None
            } else {
                data.as_object().cloned()
            },
        }
    }

    #[test]
    fn parents_come_before_children_across_tables() {
        let schema = Schema {
            tables: vec![
                table("sale_items", &[("sale_id", "sales")]),
                table("sales", &[]),
            ],
        };
        let changes = vec![
            change(
                "sale_items",
                "i1",
                json!({"id": "i1", "sale_id": "s1"}),
                false,
            ),
            change("nope", "x", json!({}), false),
            change("sales", "s1", json!({"id": "s1"}), false),
            change("sales", "s0", json!({}), true),
            change("sale_items", "i0", json!({}), true),
        ];
        assert_eq!(apply_order(&schema, &changes), vec![2, 0, 4, 3, 1]);
    }

    #[test]
    fn self_references_put_each_row_after_its_parent() {
        let schema = Schema {
            tables: vec![table("categories", &[("parent_id", "categories")])],
        };
        // c3 -> c2 -> c1, sent child-first, plus an unrelated row and a parent outside the batch.
        let changes = vec![
            change(
                "categories",
                "c3",
                json!({"id": "c3", "parent_id": "c2"}),
                false,
            ),
            change(
                "categories",
                "c2",
                json!({"id": "c2", "parent_id": "c1"}),
                false,
            ),
            change(
                "categories",
                "x",
                json!({"id": "x", "parent_id": "elsewhere"}),
                false,
            ),
            change(
                "categories",
                "c1",
                json!({"id": "c1", "parent_id": null}),
                false,
            ),
        ];
        let order = apply_order(&schema, &changes);
        let pos = |i| order.iter().position(|&o| o == i).unwrap();
        assert!(pos(3) < pos(1) && pos(1) < pos(0), "{order:?}");
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn strongly_connected_components_are_the_cycles() {
        // 0 -> 1 -> 2 -> 0 is a cycle; 3 -> 3 references itself; 4 -> 0 hangs below the cycle.
        let successors = vec![vec![1], vec![2], vec![0], vec![3], vec![0], vec![]];
        let mut components: Vec<Vec<usize>> = strongly_connected(&successors)
            .into_iter()
            .map(|mut c| {
                c.sort_unstable();
                c
            })
            .collect();
        components.sort();
        assert_eq!(components, [vec![0, 1, 2], vec![3], vec![4], vec![5]]);

        // A chain of 100 000 ending in a loop back to its start: one component, no overflow.
        let n = 100_000;
        let successors: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + 1) % n]).collect();
        let components = strongly_connected(&successors);
        assert_eq!(components.len(), 1);
        assert_eq!(components[0].len(), n);
    }

    #[test]
    fn reference_cycles_and_deep_chains_terminate() {
        let schema = Schema {
            tables: vec![table("t", &[("parent_id", "t")])],
        };
        let mut changes = vec![
            change("t", "a", json!({"id": "a", "parent_id": "b"}), false),
            change("t", "b", json!({"id": "b", "parent_id": "a"}), false),
        ];
        assert_eq!(apply_order(&schema, &changes).len(), 2);
        changes.clear();
        for i in (0..100_000).rev() {
            let id = format!("n{i}");
            let parent = if i == 0 {
                Value::Null
            } else {
                json!(format!("n{}", i - 1))
            };
            changes.push(change(
                "t",
                &id,
                json!({"id": id, "parent_id": parent}),
                false,
            ));
        }
        let order = apply_order(&schema, &changes);
        assert_eq!(order[0], changes.len() - 1);
        assert_eq!(order[changes.len() - 1], 0);
    }
}
