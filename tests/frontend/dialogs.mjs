// Closing what the frontend opens over the graph: dialogs (missing models, templates), toasts, the error overlay.

export async function closeUi(page) {
  for (let i = 0; i < 5; i++) {
    const open = await page.evaluate(
      () => document.querySelectorAll('.p-dialog, .p-toast-message, [data-testid="error-overlay"]').length
    )
    if (!open) return
    await page.evaluate(() => {
      for (const b of document.querySelectorAll(
        '.p-dialog .p-dialog-close-button, .p-dialog-header-close, .p-toast-close-button, .p-toast-icon-close, ' +
          '[data-testid="error-overlay-dismiss"]'
      ))
        b.click()
    })
    await page.keyboard.press('Escape')
    await page.waitForTimeout(100)
  }
}

// Workflow → Browse Templates → the pack's own category, once the cards in view have loaded their thumbnails
// (the frontend shows the first few and the rest on scrolling): each card's title (its thumbnail's alt text, the
// title the card shows) in the order shown, and whether its thumbnail loaded. The dialog stays open.
export async function openTemplateCards (page, pack) {
  await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'))
  await page.getByText(pack, { exact: true }).first().click({ timeout: 30_000 })
  await page.waitForFunction(() => {
    const cards = [...document.querySelectorAll('img')].filter((i) => i.src.startsWith('blob:'))
    return cards.length > 0 && cards.every((i) => i.complete)
  }, null, { timeout: 60_000, polling: 250 })
  return page.evaluate(() => [...document.querySelectorAll('img')].filter((i) => i.src.startsWith('blob:'))
    .map((i) => ({ title: i.alt, loaded: i.naturalWidth > 0 })))
}
