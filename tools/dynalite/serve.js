// serve.js runs dynalite's command-line server, surviving clients that
// abort a request mid-way: dynalite 4.0.0 rethrows the socket's ECONNRESET
// ("aborted") as an uncaught exception and dies, which a test that cancels
// a context would otherwise turn into a dead shared server.
// Usage: node serve.js [dynalite flags...]
process.on('uncaughtException', function (err) {
  if (err && (err.code === 'ECONNRESET' || err.code === 'EPIPE' || err.message === 'aborted')) return
  console.error(err)
  process.exit(1)
})
require('./node_modules/dynalite/cli.js')
