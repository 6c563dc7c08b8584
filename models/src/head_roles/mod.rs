//! LycheeDecode head roles (issue 14): which (layer, KV head) is a *retrieval* head (full
//! attention, and it picks the blocks the sparse heads above it read) and which is *sparse*.
//!
//! Owns: the roles file format ([`file`]: safetensors, U8 `retrieval` `[L, H]`, optional F32
//! `kuma_a`/`kuma_b`/`score`, string metadata) and its checks (layer 0 all retrieval, shapes,
//! fits the model).
//!
//! Must not know: how roles are found (`kvault calibrate-heads` does that), the sparse-decode
//! kernels, or the engine. The kernels crate owns the runtime type `kvault_kernels::HeadRoles`;
//! this module deliberately holds the plain `Vec<bool>` so the two never disagree on a name —
//! [`HeadRolesFile::roles_parts`] is the one conversion point.

pub mod file;

pub use file::{
    head_roles_beside_model, load_head_roles, read_head_roles, save_head_roles, HeadRolesFile, FORMAT, HEAD_ROLES_FILE_NAME,
};

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_roles_fit_stories260k_at_their_documented_density() {
        let f = crate::embedded::head_roles().unwrap();
        let c: serde_json::Value = serde_json::from_str(crate::embedded::CONFIG_JSON).unwrap();
        f.check_fits(c["num_hidden_layers"].as_u64().unwrap() as usize, c["num_key_value_heads"].as_u64().unwrap() as usize).unwrap();
        assert_eq!(f.metadata["density"], format!("{:.4}", f.density()));
        assert!(f.metadata["command"].contains("calibrate-heads"));
    }
}
