//! Renders per second for a typical template, and tracked rewrites per
//! second, on one core:
//! `cargo run --release -p ecelerity-msggen --example render_rate`

use std::time::{Duration, Instant};

use ecelerity_msggen::template::{Context, Scope, Template};
use ecelerity_msggen::tracking::{MessageIds, Scheme, Tracker, TrackingKey, TrackingOptions};
use serde_json::json;

const HTML: &str = r#"<html><head><title>{{subject or 'Your order'}}</title></head>
<body>
<p>Hello {{first_name or 'Customer'}} {{last_name}},</p>
{{if member and points > 100}}<p>You have {{points}} points, worth ${{points / 100}}.</p>
{{elseif member}}<p>Thanks for being a member.</p>
{{else}}<p><a href="https://shop.example.com/join?u={{user_id}}" data-msys-linkname="join">Join us</a></p>{{end}}
<table>
{{each items}}<tr><td>{{loop_index + 1}}</td><td><a href="https://shop.example.com/p/{{loop_var.sku}}">{{loop_var.name}}</a></td><td>{{loop_var.qty}} x {{loop_var.price}} = {{loop_var.qty * loop_var.price}}</td></tr>
{{end}}</table>
<p>Shipping to {{address.name}} at {{city or 'your city'}}.</p>
<p><a href="https://shop.example.com/unsub?e={{email}}" data-msys-unsubscribe="1">Unsubscribe</a></p>
</body></html>
"#;

fn main() {
    let template = Template::compile(HTML).expect("compiles");
    let rcpt = json!({
        "first_name": "Wilma", "last_name": "Flintstone & Co", "member": true, "points": 1250,
        "user_id": 77, "items": [
            {"sku": "A1", "name": "Bowling ball", "qty": 1, "price": 40},
            {"sku": "B2", "name": "Stone <wheel>", "qty": 2, "price": 12.5},
            {"sku": "C3", "name": "Dino food", "qty": 5, "price": 3},
        ]
    });
    let tx = json!({"city": "Bedrock", "subject": "Your order"});
    let layers = [&rcpt, &tx];
    let scope = Scope {
        layers: &layers,
        address_email: "wilma@flintstone.com",
        address_name: "Wilma",
        ..Default::default()
    };
    let mut out = Vec::with_capacity(8192);
    let window = Duration::from_secs(1);

    let started = Instant::now();
    let mut renders = 0u64;
    while started.elapsed() < window {
        for _ in 0..100 {
            out.clear();
            template
                .render(&scope, Context::Html, &mut out)
                .expect("renders");
        }
        renders += 100;
    }
    let rate = renders as f64 / started.elapsed().as_secs_f64();
    println!(
        "render: {rate:.0} renders/s ({} bytes out, {:.2} us each)",
        out.len(),
        1e6 / rate
    );

    let key = TrackingKey::new(b"benchmark-key-0123456789abcdef").expect("key");
    let options = TrackingOptions {
        open_tracking_enabled: true,
        click_tracking_enabled: true,
        click_tracking_scheme: Scheme::Https,
        tracking_domain: "track.example.com".into(),
        ..TrackingOptions::default()
    };
    let tracker = Tracker {
        key: &key,
        options: &options,
        ids: MessageIds {
            transmission_id: "11668787484950529",
            message_id: "00000bb3545c0100a205",
            recipient: "wilma@flintstone.com",
            campaign_id: "spring",
            metadata: "{\"tier\":\"gold\"}",
        },
        now: 1_800_000_000,
    };
    let rendered = out.clone();
    let mut tracked = Vec::with_capacity(16384);
    let started = Instant::now();
    let mut rewrites = 0u64;
    let mut links = 0;
    while started.elapsed() < window {
        for _ in 0..100 {
            tracked.clear();
            links = tracker.rewrite_html(&rendered, &mut tracked).links_tracked;
        }
        rewrites += 100;
    }
    let rate = rewrites as f64 / started.elapsed().as_secs_f64();
    println!(
        "track: {rate:.0} html rewrites/s ({links} links + open pixel, {} bytes out, {:.2} us each)",
        tracked.len(),
        1e6 / rate
    );
}
