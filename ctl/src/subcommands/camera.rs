//! `fleetkeyctl camera list`: the cameras fleetkeyd can scan QR codes with.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{Camera, ListCamerasRequest, ListCamerasResponse};
use serde::Serialize;

use super::Context;
use crate::output;

/// The camera commands.
#[derive(Debug, clap::Subcommand)]
pub enum CameraCommand {
    List(CameraList),
}

impl CameraCommand {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        match self {
            CameraCommand::List(cmd) => cmd.run(ctx).await,
        }
    }
}

/// List the cameras fleetkeyd can scan QR codes with
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Lists the video capture devices fleetkeyd sees (nodes that only carry \
metadata are left out), with their names, where they are attached, which \
way they face where the system tells, and the pixel formats they offer. \
USABLE says whether fleetkey reads one of them (GREY, YUYV, NV12, MJPEG). \
`user add --camera N` takes the INDEX (N of /dev/videoN) or the PATH. \
Anyone may run it.",
    after_long_help = "\
Examples:
  fleetkeyctl camera list
  fleetkeyctl --json camera list"
)]
pub struct CameraList {}

impl CameraList {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let answer = client
            .list_cameras(ListCamerasRequest {})
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        if ctx.json {
            return output::json(&cameras_json(&answer));
        }
        if !answer.capture_supported {
            output::warn(
                "this fleetkeyd was built without camera support (the v4l feature); --qr-image still works",
            );
        }
        output::data(&cameras_text(&answer))
    }
}

/// `camera list --json`.
#[derive(Debug, Serialize)]
pub struct CamerasJson {
    pub capture_supported: bool,
    pub cameras: Vec<CameraJson>,
}

#[derive(Debug, Serialize)]
pub struct CameraJson {
    pub index: u32,
    pub path: String,
    pub name: String,
    pub bus: String,
    pub driver: String,
    pub facing: String,
    pub formats: Vec<String>,
    pub readable_formats: Vec<String>,
    pub usable: bool,
}

pub fn cameras_json(answer: &ListCamerasResponse) -> CamerasJson {
    CamerasJson {
        capture_supported: answer.capture_supported,
        cameras: answer
            .cameras
            .iter()
            .map(|c: &Camera| CameraJson {
                index: c.index,
                path: c.path.clone(),
                name: c.name.clone(),
                bus: c.bus.clone(),
                driver: c.driver.clone(),
                facing: c.facing.clone(),
                formats: c.formats.clone(),
                readable_formats: c.readable_formats.clone(),
                usable: c.usable,
            })
            .collect(),
    }
}

pub fn cameras_text(answer: &ListCamerasResponse) -> String {
    if answer.cameras.is_empty() {
        return "No camera found.".to_string();
    }
    let rows: Vec<Vec<String>> = answer
        .cameras
        .iter()
        .map(|c| {
            vec![
                c.index.to_string(),
                c.path.clone(),
                c.name.clone(),
                c.facing.clone(),
                c.bus.clone(),
                c.formats.join(", "),
                output::yes_no(c.usable).to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "INDEX", "PATH", "NAME", "FACING", "BUS", "FORMATS", "USABLE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ListCamerasResponse {
        ListCamerasResponse {
            capture_supported: true,
            cameras: vec![Camera {
                path: "/dev/video0".into(),
                index: 0,
                name: "Integrated Camera".into(),
                bus: "usb-0000:00:14.0-8".into(),
                driver: "uvcvideo".into(),
                facing: "front".into(),
                formats: vec!["MJPG".into(), "YUYV".into()],
                readable_formats: vec!["MJPG".into(), "YUYV".into()],
                usable: true,
            }],
        }
    }

    #[test]
    fn table_and_json() {
        assert_eq!(
            cameras_text(&sample()),
            "INDEX  PATH         NAME               FACING  BUS                 FORMATS     USABLE\n\
             0      /dev/video0  Integrated Camera  front   usb-0000:00:14.0-8  MJPG, YUYV  yes\n"
        );
        assert_eq!(
            cameras_text(&ListCamerasResponse::default()),
            "No camera found."
        );
        let value = serde_json::to_value(cameras_json(&sample())).unwrap();
        assert_eq!(value["cameras"][0]["path"], "/dev/video0");
        assert_eq!(value["cameras"][0]["usable"], true);
        assert_eq!(value["capture_supported"], true);
    }
}
