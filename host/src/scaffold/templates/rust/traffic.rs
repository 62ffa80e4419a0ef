/// The platform's traffic API (change it to yours):
///
/// - `PUT /v1/apps/{app}/traffic/{id}` with `{"weight": N}` sends N % of requests to the
///   release `id` and the rest to the live one;
/// - `GET` on the same URL answers `{"weight": N, "applied": bool}` (404: it has none); a
///   platform that applies changes asynchronously says `applied: false` until it has;
/// - `POST /v1/apps/{app}/releases/{id}/retire` scales a release that takes no traffic down.
///
/// The host never waits inside the plugin: it calls `set_weight`, then polls `weight` until
/// the share is applied, then runs its analysis for the step's pause.
#[derive(Deserialize)]
struct Share {
    weight: u8,
    #[serde(default = "applied")]
    applied: bool,
}

fn applied() -> bool {
    true
}

impl Api {
    fn traffic_url(&self, release_id: &str) -> String {
        format!(
            "{}/traffic/{}",
            self.base.trim_end_matches("/releases"),
            http::encode(release_id)
        )
    }
}

impl Traffic for Plugin {
    fn strategies(_ctx: &Context) -> Result<Vec<Strategy>, PluginError> {
        Ok(vec![Strategy::BlueGreen, Strategy::Canary])
    }

    fn set_weight(ctx: &Context, release_id: &str, weight: u8) -> Result<(), PluginError> {
        if weight > 100 {
            return Err(rejected(format!("weight {weight} is over 100")));
        }
        let api = Api::new(ctx)?;
        // An unknown release is the platform's 404: rejected, not retried.
        api.release(release_id)?;
        http::put(&api.traffic_url(release_id))
            .header("authorization", api.token.bearer())
            .json(&json!({ "weight": weight }))?
            .send()?
            .error_for_status()?;
        Ok(())
    }

    fn weight(ctx: &Context, release_id: &str) -> Result<TrafficStatus, PluginError> {
        let api = Api::new(ctx)?;
        let r = http::get(&api.traffic_url(release_id))
            .header("authorization", api.token.bearer())
            .send()?;
        if r.status == 404 {
            return Ok(TrafficStatus {
                weight: 0,
                taken_effect: true,
                detail: String::new(),
            });
        }
        let share: Share = r.error_for_status()?.json()?;
        Ok(TrafficStatus {
            weight: share.weight,
            taken_effect: share.applied,
            detail: if share.applied {
                String::new()
            } else {
                "the platform is applying the change".into()
            },
        })
    }

    fn abort(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        if Self::weight(ctx, release_id)?.weight == 0 {
            return Ok(());
        }
        Self::set_weight(ctx, release_id, 0)
    }

    fn retire(ctx: &Context, release_id: &str) -> Result<(), PluginError> {
        let api = Api::new(ctx)?;
        if api.release(release_id)?.status == "live" {
            return Err(rejected(format!(
                "{release_id} is live; it cannot be retired"
            )));
        }
        let url = format!("{}/{}/retire", api.base, http::encode(release_id));
        api.post(&url, &json!({}))?;
        Ok(())
    }
}

export!(Plugin: deploy_target, traffic);
