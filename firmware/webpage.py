# The local page's HTML: state, schedule, errors, buttons and the upload form. Loaded by web.py for a page
# visit only, then let go.

_PAGE = """<!doctype html><meta name=viewport content="width=device-width"><title>%s</title>
<h1>%s</h1><p>relay <b>%s</b>, mode <b>%s</b>, uptime %d s, time %s</p>
<p><button onclick="go('switch',{state:'ON'})">ON</button> <button onclick="go('switch',{state:'OFF'})">OFF</button>
<button onclick="go('stop',{})">STOP</button> <button onclick="go('stop',{resume:true})">RESUME</button>
<button onclick="go('logic',{enabled:true})">NodeLogic on</button> <button onclick="go('logic',{enabled:false})">NodeLogic off</button></p>
<h2>Schedule</h2><pre>%s</pre><h2>Recent errors</h2><pre>%s</pre>
<h2>Firmware %s</h2><p><input type=file id=f accept=.nfu> <button onclick="up()">Upload</button> <b id=o>%s</b></p>
<script>function go(p,b){fetch('/api/'+p,{method:'POST',body:JSON.stringify(b)}).then(()=>location.reload())}
var o=document.getElementById('o'),S=t=>new Promise(r=>setTimeout(r,t));
function j(r){return r.json().then(b=>{if(!r.ok)throw Error(b.error);return b})}
async function st(){for(;;){await S(1000);try{return await j(await fetch('/api/ota'))}catch(e){}}}
async function up(){var f=document.getElementById('f').files[0];if(!f)return;try{o.textContent='restarting into download mode';
await j(await fetch('/api/ota',{method:'POST'}));for(var s;(s=await st()).mode!='download';);o.textContent='uploading';
var b=await j(await fetch('/api/ota',{method:'POST',body:f}));o.textContent=b.state+(b.next?': '+b.next:'');
for(;(s=await st()).mode=='download';)o.textContent=s.state;o.textContent='now running '+s.fw+(s.ota?' ('+s.ota+')':'')
}catch(e){o.textContent='failed: '+e.message}}</script>"""


def _esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;")


def render(app, ota):
    n = app.node
    rules = "\n".join("%s %s %ds %s %s" % (r["id"], r["at"], r["duration"], ",".join(r.get("days", ["every day"])),
                                          r.get("action", "on")) for r in n.rules) or "no rules"
    errors = "\n".join("#%d %s %s" % (e["seq"], e["code"], e["msg"]) for e in app.errlog.items[-5:]) or "none"
    last = ota.get("reason")
    return _PAGE % (app.prefix, app.prefix, "ON" if n.relay else "OFF", n.mode(), app.uptime(),
                    "valid" if n.payload()["time_valid"] else "not set", _esc(rules), _esc(errors), app.fw,
                    _esc("last upload failed: " + last) if last else "")
